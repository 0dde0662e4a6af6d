"""The `Warehouse` protocol and the transactional write flow of the SQL adapters.

Every adapter offers the same small API: a context manager holding one connection for the whole
block, `read_sql()` returning a DataFrame and `write()` loading a DataFrame/Arrow table by the
bulk path. `SqlWarehouse` implements `write()` once for warehouses with transactional DDL
(DuckDB, Postgres): the schema check, create/redefine, delete and bulk insert all happen in ONE
transaction, so a failed write leaves the table exactly as it was.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Protocol, Sequence, Union, runtime_checkable

import pandas as pd
import pyarrow as pa

from mage_dbt.errors import BlockError, MageDbtError
from mage_dbt.warehouse.frames import (
    check_columns, column_problems, first_line, partition_scalar, split_table_name, to_arrow,
)
from mage_dbt.warehouse.profile import TargetConfig, scrub

WriteMode = Literal["append", "replace", "replace_partition"]
WRITE_MODES: tuple[str, ...] = ("append", "replace", "replace_partition")
Params = Union[Sequence[Any], Mapping[str, Any], None]
Frame = Union[pd.DataFrame, pa.Table]
# name -> (type family, SQL type as the warehouse spells it); see frames.arrow_family
Columns = dict[str, tuple[str, str]]


@runtime_checkable
class Warehouse(Protocol):
    """What Python and SQL blocks use to talk to the dbt target."""

    target: TargetConfig

    def __enter__(self) -> "Warehouse": ...

    def __exit__(self, *exc_info: object) -> None: ...

    def close(self) -> None: ...

    def read_sql(self, query: str, params: Params = None) -> pd.DataFrame: ...

    def write(self, data: Frame, table: str, schema: str | None = None,
              mode: WriteMode = "append", partition_column: str | None = None,
              partition_value: Any = None) -> int: ...


@dataclass(frozen=True)
class WriteRequest:
    """A validated `write()` call: where to, how, and the rows as one Arrow table."""

    schema: str
    table: str
    mode: str
    data: pa.Table
    partition_column: str | None = None
    partition_value: Any = None

    @property
    def where(self) -> str:
        return f"{self.schema}.{self.table}"


def prepare_write(target: TargetConfig, data: Frame, table: str, schema: str | None,
                  mode: str, partition_column: str | None,
                  partition_value: Any) -> WriteRequest:
    """Validate the arguments of `write()` before any connection work happens."""
    schema, table = split_table_name(table, schema, target.schema)
    where = f"{schema}.{table}"
    if mode not in WRITE_MODES:
        raise BlockError(f"cannot write to {where}: unknown mode {mode!r} "
                         f"(use one of {', '.join(WRITE_MODES)})")
    if mode != "replace_partition" and (partition_column or partition_value is not None):
        raise BlockError(f"cannot write to {where}: partition_column/partition_value only "
                         f"apply to mode='replace_partition'")
    if mode == "replace_partition" and not partition_column:
        raise BlockError(f"cannot write to {where}: mode='replace_partition' needs "
                         f"partition_column and partition_value")
    arrow = to_arrow(data, where=where)
    if mode == "replace_partition":
        partition_value = partition_scalar(arrow, str(partition_column), partition_value,
                                           where=where)
    return WriteRequest(schema, table, mode, arrow, partition_column, partition_value)


class SqlWarehouse(ABC):
    """One connection per block; `write()` runs in a single transaction.

    Construction has no side effects: the connection opens on `__enter__` (or first use) and
    closes on `__exit__`/`close()`.
    """

    driver_errors: tuple[type[BaseException], ...] = ()

    def __init__(self, target: TargetConfig) -> None:
        self.target = target
        self._conn: Any = None

    def __enter__(self) -> "SqlWarehouse":
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._conn is not None else "closed"
        where = f"{self.target.profile_name}.{self.target.target_name}"
        return f"{type(self).__name__}({where}, {state})"

    def open(self) -> None:
        if self._conn is None:
            self._conn = self._connect()

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    @property
    def connection(self) -> Any:
        """The open driver connection (opened on first use)."""
        self.open()
        return self._conn

    def read_sql(self, query: str, params: Params = None) -> pd.DataFrame:
        """Run `query` (the driver's paramstyle for `params`) and return the rows."""
        try:
            return self._read_frame(query, params)
        except self.driver_errors as exc:
            raise BlockError(f"query failed on target {self.target.target_name!r}: "
                             f"{self._message(exc)}") from None

    def write(self, data: Frame, table: str, schema: str | None = None,
              mode: WriteMode = "append", partition_column: str | None = None,
              partition_value: Any = None) -> int:
        """Load `data` into `schema.table` by the bulk path; return the number of rows written.

        append: add the rows. replace: the table holds exactly these rows afterwards (its
        columns are redefined when they differ). replace_partition: delete the rows where
        `partition_column = partition_value`, then insert (every row must belong to that
        partition, so re-running the same date is idempotent). The table is created from the
        Arrow types when missing; for append/replace_partition a column clash raises BlockError.
        All of it is one transaction: on any error the table is left unchanged. The DataFrame
        index is not written (call `reset_index()` first to keep it).
        """
        req = prepare_write(self.target, data, table, schema, mode, partition_column,
                            partition_value)
        self.open()
        self._begin()
        try:
            self._write_in_transaction(req)
            self._commit()
        except BaseException as exc:
            try:
                self._rollback()
            except self.driver_errors:
                pass  # the connection is broken; the server discards the transaction anyway
            if isinstance(exc, self.driver_errors) and not isinstance(exc, MageDbtError):
                raise BlockError(f"writing to {req.where} failed (rolled back): "
                                 f"{self._message(exc)}", hint=self._hint(exc)) from None
            raise
        return req.data.num_rows

    def _write_in_transaction(self, req: WriteRequest) -> None:
        if not self._schema_exists(req.schema):
            self._create_schema(req.schema)
        existing = self._columns(req.schema, req.table)
        if existing is None:
            self._create_table(req)
        elif req.mode == "replace" and column_problems(existing, req.data):
            self._drop_table(req)
            self._create_table(req)
        else:
            check_columns(req.where, existing, req.data)
            if req.mode == "replace":
                self._delete(req, partition=False)
            elif req.mode == "replace_partition":
                self._delete(req, partition=True)
        if req.data.num_rows:
            self._insert(req)

    def _message(self, exc: BaseException) -> str:
        return scrub(first_line(str(exc)), self.target.secret_values())

    def _hint(self, exc: BaseException) -> str | None:
        return None

    @abstractmethod
    def _connect(self) -> Any: ...

    @abstractmethod
    def _begin(self) -> None: ...

    @abstractmethod
    def _commit(self) -> None: ...

    @abstractmethod
    def _rollback(self) -> None: ...

    @abstractmethod
    def _schema_exists(self, schema: str) -> bool: ...

    @abstractmethod
    def _create_schema(self, schema: str) -> None: ...

    @abstractmethod
    def _columns(self, schema: str, table: str) -> Columns | None:
        """Existing columns in table order, or None when there is no such table."""

    @abstractmethod
    def _create_table(self, req: WriteRequest) -> None: ...

    @abstractmethod
    def _drop_table(self, req: WriteRequest) -> None: ...

    @abstractmethod
    def _delete(self, req: WriteRequest, *, partition: bool) -> None: ...

    @abstractmethod
    def _insert(self, req: WriteRequest) -> None: ...

    @abstractmethod
    def _read_frame(self, query: str, params: Params) -> pd.DataFrame: ...
