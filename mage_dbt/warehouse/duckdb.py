"""DuckDB warehouse: Arrow in, Arrow out, on the file the dbt target points at.

Reads go through DuckDB's Arrow export (`relation.to_arrow_table()`: columnar, no per-row Python
objects). Writes register the Arrow table as a view and run `INSERT INTO ... SELECT` from it,
inside one transaction (DuckDB DDL is transactional too). A DuckDB file takes one writing
process at a time: keep the `with` block short and never open it while dbt runs on the file.
"""

from __future__ import annotations

import uuid
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from mage_dbt.errors import BlockError
from mage_dbt.warehouse.base import Columns, Params, SqlWarehouse, WriteRequest
from mage_dbt.warehouse.connections import duckdb_connection
from mage_dbt.warehouse.frames import arrow_family, to_pandas

_DDL_TYPES: dict[str, str] = {
    "float": "DOUBLE", "text": "VARCHAR", "bool": "BOOLEAN", "date": "DATE", "time": "TIME",
    "timestamp": "TIMESTAMP", "timestamptz": "TIMESTAMPTZ", "binary": "BLOB", "null": "VARCHAR",
}
_INT_TYPES: dict[pa.DataType, str] = {
    pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
    pa.uint8(): "UTINYINT", pa.uint16(): "USMALLINT", pa.uint32(): "UINTEGER",
    pa.uint64(): "UBIGINT",
}
_FAMILIES: dict[str, str] = {
    "TINYINT": "int", "SMALLINT": "int", "INTEGER": "int", "BIGINT": "int", "HUGEINT": "int",
    "UTINYINT": "int", "USMALLINT": "int", "UINTEGER": "int", "UBIGINT": "int",
    "UHUGEINT": "int", "FLOAT": "float", "DOUBLE": "float", "VARCHAR": "text",
    "BOOLEAN": "bool", "DATE": "date", "TIME": "time", "TIMESTAMP": "timestamp",
    "TIMESTAMP_S": "timestamp", "TIMESTAMP_MS": "timestamp", "TIMESTAMP_NS": "timestamp",
    "TIMESTAMP WITH TIME ZONE": "timestamptz", "BLOB": "binary",
}

def quote(identifier: str) -> str:
    """A DuckDB quoted identifier (embedded quotes doubled: no injection through names)."""
    return '"' + identifier.replace('"', '""') + '"'


def duckdb_type(field: pa.Field) -> str:
    """The DuckDB column type created for an Arrow field."""
    data_type = field.type
    family = arrow_family(data_type)
    if family == "int":
        return _INT_TYPES[data_type]
    if family == "float" and data_type.bit_width < 64:
        return "FLOAT"
    if family == "decimal" and data_type.precision <= 38:
        return f"DECIMAL({data_type.precision},{data_type.scale})"
    if family in _DDL_TYPES:
        return _DDL_TYPES[family]
    raise BlockError(f"column {field.name!r} has Arrow type {data_type}, which write() cannot "
                     f"map to a DuckDB column type")


def duckdb_family(sql_type: str) -> str:
    upper = sql_type.upper()
    if upper.startswith("DECIMAL") or upper.startswith("NUMERIC"):
        return "decimal"
    if upper.startswith("VARCHAR"):
        return "text"
    return _FAMILIES.get(upper, "other")


class DuckDBWarehouse(SqlWarehouse):
    """Warehouse I/O on a DuckDB target (`path`, `settings`/`config_options`, `extensions`)."""

    driver_errors = (duckdb.Error,)

    def _connect(self) -> Any:
        return duckdb_connection(self.target)

    def _begin(self) -> None:
        self.connection.begin()

    def _commit(self) -> None:
        self.connection.commit()

    def _rollback(self) -> None:
        self.connection.rollback()

    def _catalog(self) -> str:
        # Qualify with the catalog: a file named like the schema (bench.duckdb holding schema
        # bench) makes "bench"."t" ambiguous in DuckDB.
        row = self.connection.execute("SELECT current_database()").fetchone()
        return quote(str(row[0]))

    def _qualified(self, req: WriteRequest) -> str:
        return f"{self._catalog()}.{quote(req.schema)}.{quote(req.table)}"

    def _schema_exists(self, schema: str) -> bool:
        row = self.connection.execute(
            "SELECT count(*) FROM information_schema.schemata "
            "WHERE catalog_name = current_database() AND schema_name = ?", [schema]).fetchone()
        return bool(row and row[0])

    def _create_schema(self, schema: str) -> None:
        self.connection.execute(f"CREATE SCHEMA {self._catalog()}.{quote(schema)}")

    def _columns(self, schema: str, table: str) -> Columns | None:
        conn = self.connection
        kind = conn.execute(
            "SELECT table_type FROM information_schema.tables WHERE table_catalog = "
            "current_database() AND table_schema = ? AND table_name = ?", [schema, table]
        ).fetchone()
        if kind is None:
            return None
        if kind[0] != "BASE TABLE":
            raise BlockError(f"cannot write to {schema}.{table}: it is a {kind[0].lower()}, "
                             f"not a table")
        rows = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_catalog "
            "= current_database() AND table_schema = ? AND table_name = ? "
            "ORDER BY ordinal_position", [schema, table]).fetchall()
        return {name: (duckdb_family(sql_type), sql_type) for name, sql_type in rows}

    def _create_table(self, req: WriteRequest) -> None:
        columns = ", ".join(f"{quote(f.name)} {duckdb_type(f)}" for f in req.data.schema)
        self.connection.execute(f"CREATE TABLE {self._qualified(req)} ({columns})")

    def _drop_table(self, req: WriteRequest) -> None:
        self.connection.execute(f"DROP TABLE {self._qualified(req)}")

    def _delete(self, req: WriteRequest, *, partition: bool) -> None:
        if partition:
            self.connection.execute(
                f"DELETE FROM {self._qualified(req)} WHERE {quote(str(req.partition_column))} = ?",
                [req.partition_value])
        else:
            self.connection.execute(f"DELETE FROM {self._qualified(req)}")

    def _insert(self, req: WriteRequest) -> None:
        view = f"__mage_dbt_write_{uuid.uuid4().hex}"
        columns = ", ".join(quote(name) for name in req.data.column_names)
        conn = self.connection
        conn.register(view, req.data)
        try:
            conn.execute(f"INSERT INTO {self._qualified(req)} ({columns}) "
                         f"SELECT {columns} FROM {quote(view)}")
        finally:
            conn.unregister(view)

    def _read_frame(self, query: str, params: Params) -> pd.DataFrame:
        relation = self.connection.sql(query, params=params)
        if relation is None:  # a statement without a result (older duckdb)
            return pd.DataFrame()
        to_arrow = getattr(relation, "to_arrow_table", None) or relation.arrow
        return to_pandas(to_arrow())
