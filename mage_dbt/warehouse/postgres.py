"""Postgres warehouse: COPY in both directions, one psycopg2 connection per block.

Writes stream the Arrow table to `COPY ... FROM STDIN (FORMAT csv)`; the CSV is produced by
pyarrow's C++ writer batch by batch (no Python per row, no whole-table buffer), inside one
transaction with the DDL/DELETE. Reads use `COPY (query) TO STDOUT (FORMAT csv)` parsed by
pyarrow's multithreaded CSV reader with the column types taken from the query's result
description, which avoids building a Python object per value as `cursor.fetchall()` does
(see bench/bench_load.py). Result types the fast path cannot represent exactly (json, arrays,
intervals, bytea, out-of-range dates) fall back to the cursor. The connection runs in autocommit
with explicit BEGIN/COMMIT around writes, so a long block holds no locks between statements,
and with TimeZone=UTC so timestamptz values come back with an explicit offset.
"""

from __future__ import annotations

import io
from typing import Any

import pandas as pd
import psycopg2
import psycopg2.errorcodes
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg2 import sql

from mage_dbt.errors import BlockError
from mage_dbt.warehouse.base import Columns, Params, SqlWarehouse, WriteRequest
from mage_dbt.warehouse.connections import postgres_connection
from mage_dbt.warehouse.frames import arrow_family, to_pandas

_DDL_TYPES: dict[str, str] = {
    "text": "text", "bool": "boolean", "date": "date", "time": "time", "null": "text",
    "timestamp": "timestamp", "timestamptz": "timestamptz",
}
_INT_TYPES: dict[pa.DataType, str] = {
    pa.int8(): "smallint", pa.int16(): "smallint", pa.uint8(): "smallint",
    pa.int32(): "integer", pa.uint16(): "integer", pa.int64(): "bigint",
    pa.uint32(): "bigint", pa.uint64(): "numeric(20,0)",
}
_FAMILIES: dict[str, str] = {
    "int2": "int", "int4": "int", "int8": "int", "float4": "float", "float8": "float",
    "numeric": "decimal", "text": "text", "varchar": "text", "bpchar": "text", "name": "text",
    "citext": "text", "bool": "bool", "date": "date", "time": "time", "timestamp": "timestamp",
    "timestamptz": "timestamptz", "bytea": "binary",
}
# Result column type OID -> Arrow type for the COPY fast path (numeric becomes float64, as in
# pandas.read_sql's default coerce_float=True).
_ARROW_BY_OID: dict[int, pa.DataType] = {
    16: pa.bool_(), 20: pa.int64(), 21: pa.int16(), 23: pa.int32(), 26: pa.int64(),
    700: pa.float32(), 701: pa.float64(), 1700: pa.float64(), 25: pa.string(),
    1043: pa.string(), 1042: pa.string(), 19: pa.string(), 2950: pa.string(),
    1082: pa.date32(), 1083: pa.time64("us"), 1114: pa.timestamp("us"),
    1184: pa.timestamp("us", tz="UTC"),
}
_CSV_CONVERT = dict(null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False,
                    true_values=["t"], false_values=["f"])


def postgres_type(field: pa.Field) -> str:
    """The Postgres column type created for an Arrow field."""
    data_type = field.type
    family = arrow_family(data_type)
    if family == "int":
        return _INT_TYPES[data_type]
    if family == "float":
        return "real" if data_type.bit_width < 64 else "double precision"
    if family == "decimal":
        return f"numeric({data_type.precision},{data_type.scale})"
    if family in _DDL_TYPES:
        return _DDL_TYPES[family]
    raise BlockError(f"column {field.name!r} has Arrow type {data_type}, which write() cannot "
                     f"load into Postgres")


class _CsvStream(io.RawIOBase):
    """A file-like COPY source: the Arrow table as CSV, rendered one record batch at a time."""

    def __init__(self, table: pa.Table, rows_per_batch: int = 65_536) -> None:
        super().__init__()
        self._batches = iter(table.to_batches(max_chunksize=rows_per_batch))
        self._pending = memoryview(b"")
        self._options = pacsv.WriteOptions(include_header=False)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        while not self._pending:
            batch = next(self._batches, None)
            if batch is None:
                return b""
            sink = pa.BufferOutputStream()
            pacsv.write_csv(batch, sink, self._options)
            self._pending = memoryview(sink.getvalue())
        size = len(self._pending) if size is None or size < 0 else size
        chunk, self._pending = self._pending[:size], self._pending[size:]
        return bytes(chunk)


class PostgresWarehouse(SqlWarehouse):
    """Warehouse I/O on a Postgres target (host, port, user, password, database, sslmode...)."""

    driver_errors = (psycopg2.Error,)

    def _connect(self) -> Any:
        return postgres_connection(self.target)

    def _execute(self, statement: Any, params: Any = None) -> Any:
        cur = self.connection.cursor()
        cur.execute(statement, params)
        return cur

    def _begin(self) -> None:
        self._execute("BEGIN").close()

    def _commit(self) -> None:
        self._execute("COMMIT").close()

    def _rollback(self) -> None:
        self._execute("ROLLBACK").close()

    def _hint(self, exc: BaseException) -> str | None:
        if getattr(exc, "pgcode", None) == psycopg2.errorcodes.DEPENDENT_OBJECTS_STILL_EXIST:
            return ("mode='replace' redefines a table whose columns changed; drop the dependent "
                    "views first (dbt recreates them) or write the existing columns")
        return None

    def _qualified(self, req: WriteRequest) -> sql.Composable:
        return sql.SQL("{}.{}").format(sql.Identifier(req.schema), sql.Identifier(req.table))

    def _schema_exists(self, schema: str) -> bool:
        with self._execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]) as cur:
            return cur.fetchone() is not None

    def _create_schema(self, schema: str) -> None:
        self._execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema))).close()

    def _columns(self, schema: str, table: str) -> Columns | None:
        with self._execute(
            "SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
            [schema, table],
        ) as cur:
            row = cur.fetchone()
            if row is None:
                return None
            if row[1] not in ("r", "p"):
                kind = {"v": "view", "m": "materialized view"}.get(row[1], "non-table relation")
                raise BlockError(f"cannot write to {schema}.{table}: it is a {kind}, not a table")
            cur.execute(
                "SELECT a.attname, t.typname, format_type(a.atttypid, a.atttypmod) "
                "FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid WHERE a.attrelid = %s "
                "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum", [row[0]])
            return {name: (_FAMILIES.get(typname, "other"), shown)
                    for name, typname, shown in cur.fetchall()}

    def _create_table(self, req: WriteRequest) -> None:
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(postgres_type(f)))
            for f in req.data.schema)
        self._execute(sql.SQL("CREATE TABLE {} ({})").format(self._qualified(req), columns)).close()

    def _drop_table(self, req: WriteRequest) -> None:
        self._execute(sql.SQL("DROP TABLE {}").format(self._qualified(req))).close()

    def _delete(self, req: WriteRequest, *, partition: bool) -> None:
        statement = sql.SQL("DELETE FROM {}").format(self._qualified(req))
        if not partition:
            self._execute(statement).close()
            return
        where = sql.SQL(" WHERE {} = %s").format(sql.Identifier(str(req.partition_column)))
        self._execute(statement + where, [req.partition_value]).close()

    def _insert(self, req: WriteRequest) -> None:
        for f in req.data.schema:
            if arrow_family(f.type) in ("binary", "other"):
                raise BlockError(f"cannot write to {req.where}: column {f.name!r} has Arrow type "
                                 f"{f.type}, which the COPY path does not load")
        columns = sql.SQL(", ").join(sql.Identifier(name) for name in req.data.column_names)
        statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
            self._qualified(req), columns)
        with self.connection.cursor() as cur:
            cur.copy_expert(statement.as_string(self.connection), _CsvStream(req.data),
                            size=1 << 20)

    def _read_frame(self, query: str, params: Params) -> pd.DataFrame:
        with self.connection.cursor() as cur:
            text = query if params is None else cur.mogrify(query, params).decode()
            table = self._copy_out(cur, text.strip().rstrip(";"))
            if table is not None:
                return to_pandas(table)
            cur.execute(query, params)
            if cur.description is None:
                return pd.DataFrame()
            names = [column.name for column in cur.description]
            return pd.DataFrame.from_records(cur.fetchall(), columns=names)

    def _copy_out(self, cur: Any, text: str) -> pa.Table | None:
        """The result via COPY TO STDOUT, or None when the fast path does not apply."""
        try:
            # Newlines keep a trailing `-- comment` in the query from eating the parenthesis.
            cur.execute(f"SELECT * FROM (\n{text}\n) AS mage_dbt_q LIMIT 0")
        except psycopg2.Error:
            return None  # not a plain query (DDL, INSERT ... RETURNING, ...): use the cursor
        types = [_ARROW_BY_OID.get(column.type_code) for column in cur.description]
        if not all(types):
            return None
        names = [column.name for column in cur.description]
        buffer = io.BytesIO()
        cur.copy_expert(f"COPY (\n{text}\n) TO STDOUT WITH (FORMAT csv)", buffer, size=1 << 20)
        positional = [f"c{i}" for i in range(len(names))]
        if buffer.tell() == 0:
            return pa.Table.from_arrays([pa.array([], t) for t in types], names=names)
        buffer.seek(0)
        try:
            table = pacsv.read_csv(
                buffer, read_options=pacsv.ReadOptions(column_names=positional),
                convert_options=pacsv.ConvertOptions(
                    column_types=dict(zip(positional, types)), **_CSV_CONVERT))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None  # e.g. 'infinity' timestamps or BC dates: the cursor path handles them
        return table.rename_columns(names)
