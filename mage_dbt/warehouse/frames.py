"""DataFrame/Arrow plumbing shared by the warehouse adapters.

Owns: turning what a block hands to `write()` into one Arrow table, the coarse type families
used to compare a DataFrame with an existing table (and the clash message when they disagree),
the partition check that makes `replace_partition` idempotent, and the conversion of query
results back to pandas with the same dtypes on every adapter.
"""

from __future__ import annotations

from typing import Any, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from mage_dbt.errors import BlockError
from mage_dbt.warehouse.profile import first_line  # noqa: F401  (re-exported: adapters use it)

# Which table column families accept which DataFrame column families. Deliberately strict:
# naive vs tz-aware timestamps and date vs timestamp would silently shift or truncate values.
_ACCEPTS: dict[str, frozenset[str]] = {
    "int": frozenset({"int", "float", "decimal"}),
    "float": frozenset({"float", "decimal"}),
    "decimal": frozenset({"decimal", "float"}),
    "text": frozenset({"text", "other"}),
    "bool": frozenset({"bool"}),
    "date": frozenset({"date"}),
    "timestamp": frozenset({"timestamp"}),
    "timestamptz": frozenset({"timestamptz"}),
    "time": frozenset({"time"}),
    "binary": frozenset({"binary"}),
}

# Query results: integers and booleans become pandas' nullable dtypes, so a column keeps one
# dtype whether or not today's rows hold a NULL (and can be written back to the same table).
_PANDAS_TYPES: dict[pa.DataType, Any] = {
    pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
    pa.int64(): pd.Int64Dtype(), pa.uint8(): pd.UInt8Dtype(), pa.uint16(): pd.UInt16Dtype(),
    pa.uint32(): pd.UInt32Dtype(), pa.uint64(): pd.UInt64Dtype(), pa.bool_(): pd.BooleanDtype(),
}


def arrow_family(data_type: pa.DataType) -> str:
    """The type family of an Arrow type: int, float, decimal, text, bool, date, timestamp,
    timestamptz, time, binary, null or other."""
    t = pa.types
    if t.is_dictionary(data_type):
        return arrow_family(data_type.value_type)
    checks = (
        (t.is_integer, "int"), (t.is_floating, "float"), (t.is_decimal, "decimal"),
        (t.is_boolean, "bool"), (t.is_date, "date"), (t.is_time, "time"), (t.is_null, "null"),
        (lambda d: t.is_string(d) or t.is_large_string(d) or t.is_string_view(d), "text"),
        (lambda d: t.is_binary(d) or t.is_large_binary(d) or t.is_fixed_size_binary(d), "binary"),
    )
    if t.is_timestamp(data_type):
        return "timestamptz" if data_type.tz else "timestamp"
    for check, family in checks:
        if check(data_type):
            return family
    return "other"


def to_arrow(data: Any, *, where: str) -> pa.Table:
    """A pandas DataFrame or pyarrow Table as an Arrow table with plain (non-dictionary) columns."""
    if isinstance(data, pd.DataFrame):
        if data.columns.duplicated().any():
            dupes = sorted({str(c) for c in data.columns[data.columns.duplicated()]})
            raise BlockError(f"cannot write to {where}: duplicate columns {', '.join(dupes)}")
        try:
            table = pa.Table.from_pandas(data, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise BlockError(f"cannot write to {where}: a column does not convert to Arrow: "
                             f"{first_line(str(exc))}",
                             hint="give the column a single type (e.g. df[col].astype(str))"
                             ) from None
    elif isinstance(data, pa.Table):
        table = data
    elif isinstance(data, pa.RecordBatch):
        table = pa.Table.from_batches([data])
    else:
        raise BlockError(f"cannot write to {where}: write() takes a pandas DataFrame or a "
                         f"pyarrow Table, got {type(data).__name__}")
    names = table.column_names
    if any(not name for name in names):
        raise BlockError(f"cannot write to {where}: a column has an empty name")
    if len(set(names)) != len(names):
        raise BlockError(f"cannot write to {where}: duplicate column names")
    columns = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c
               for c in table.columns]
    return pa.Table.from_arrays(columns, names=names)


def check_columns(where: str, existing: Mapping[str, tuple[str, str]], table: pa.Table) -> None:
    """Raise BlockError when `table` does not fit the existing columns.

    `existing` maps column name -> (family, SQL type as the warehouse shows it). Every table
    column must be present in the DataFrame and vice versa, with a compatible type family.
    """
    problems = column_problems(existing, table)
    if problems:
        raise BlockError(f"cannot write to {where}: columns clash with the existing table: "
                         f"{'; '.join(problems)}",
                         hint="change the DataFrame to match the table, or write with "
                              "mode='replace' to redefine the table")


def column_problems(existing: Mapping[str, tuple[str, str]], table: pa.Table) -> list[str]:
    """The clashes between existing columns and an Arrow table, as short phrases (empty: fits)."""
    incoming = {f.name: f.type for f in table.schema}
    problems: list[str] = []
    missing = [name for name in existing if name not in incoming]
    extra = [name for name in incoming if name not in existing]
    if missing:
        problems.append(f"missing from the DataFrame: {', '.join(missing)}")
    if extra:
        problems.append(f"not in the table: {', '.join(extra)}")
    wrong = []
    for name, data_type in incoming.items():
        if name not in existing:
            continue
        family, sql_type = existing[name]
        mine = arrow_family(data_type)
        if mine != "null" and family not in _ACCEPTS.get(mine, frozenset()):
            shown = "string" if mine == "text" else str(data_type)
            wrong.append(f"{name} ({shown} into {sql_type})")
    if wrong:
        problems.append(f"incompatible types: {', '.join(wrong)}")
    return problems


def partition_scalar(table: pa.Table, column: str, value: Any, *, where: str) -> Any:
    """Check every row of `table` belongs to partition `column = value`; return the value as
    the column's Python type (used as the DELETE parameter).

    A row of another partition would be inserted but never deleted by a re-run, so re-running
    the same date would duplicate it: that is refused here.
    """
    if column not in table.column_names:
        raise BlockError(f"cannot write to {where}: partition column {column!r} is not a "
                         f"column of the DataFrame")
    if value is None:
        raise BlockError(f"cannot write to {where}: replace_partition needs a partition_value")
    col = table.column(column)
    try:
        scalar = pa.scalar(value).cast(col.type) if not pa.types.is_null(col.type) else None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise BlockError(f"cannot write to {where}: partition_value {value!r} does not match "
                         f"the type of column {column!r} ({col.type})") from None
    if table.num_rows:
        outside = table.num_rows if scalar is None else (
            table.num_rows - pc.sum(pc.fill_null(pc.equal(col, scalar), False)).as_py())
        if outside:
            raise BlockError(f"cannot write to {where}: {outside} row(s) have {column} other "
                             f"than {value!r}",
                             hint="replace_partition writes exactly one partition; filter the "
                                  "DataFrame or write each partition separately")
    return value if scalar is None else scalar.as_py()


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """An Arrow query result as a DataFrame: nullable ints/bools, tz-aware timestamps in UTC
    whatever the session time zone of the warehouse (DuckDB reports its local zone)."""
    columns = [c.cast(pa.timestamp(c.type.unit, tz="UTC"))
               if pa.types.is_timestamp(c.type) and c.type.tz else c for c in table.columns]
    table = pa.Table.from_arrays(columns, names=table.column_names)
    return table.to_pandas(types_mapper=_PANDAS_TYPES.get)


def split_table_name(table: str, schema: str | None, default_schema: str) -> tuple[str, str]:
    """(schema, table) for a `write()` call; `"raw.orders"` means schema raw, table orders."""
    if not table:
        raise BlockError("write() needs a table name")
    if schema is None and "." in table:
        schema, table = table.split(".", 1)
    return (schema or default_schema), table
