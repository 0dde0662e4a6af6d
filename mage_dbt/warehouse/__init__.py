"""Warehouse I/O for Python and SQL blocks, on the same target dbt uses.

    target = resolve_target(profiles_dir, "mage_dbt_demo", "pg")
    with connect(target) as wh:
        df = wh.read_sql("select * from analytics.orders where day = %s", [day])
        wh.write(df, "raw.orders", mode="replace_partition",
                 partition_column="day", partition_value=day)

Connection settings come only from profiles.yml (rendered by dbt). Each adapter (DuckDB,
Postgres, BigQuery) holds one connection for the `with` block and writes by the bulk path
(DuckDB from Arrow, Postgres COPY, BigQuery load jobs), never row by row. Adapter modules are
imported lazily, so a DuckDB user never imports the Google client libraries, and the DataFrame
side (pandas, pyarrow) is imported only when a Warehouse is: a dbt-only run never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mage_dbt.errors import ConfigError
from mage_dbt.warehouse.profile import SUPPORTED_TYPES, TargetConfig, resolve_target

if TYPE_CHECKING:
    from mage_dbt.warehouse.base import WRITE_MODES, Warehouse, WriteMode

__all__ = [
    "SUPPORTED_TYPES", "WRITE_MODES", "TargetConfig", "Warehouse", "WriteMode", "connect",
    "resolve_target",
]


def __getattr__(name: str) -> Any:
    """`Warehouse`, `WriteMode` and `WRITE_MODES` come from base.py, imported on first use."""
    if name in ("WRITE_MODES", "Warehouse", "WriteMode"):
        from mage_dbt.warehouse import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def connect(target: TargetConfig, **options: Any) -> Warehouse:
    """The Warehouse for `target` (not yet connected: use it as a context manager).

    `options` go to the adapter class (e.g. `client=` for BigQuery).
    """
    if target.type == "duckdb":
        from mage_dbt.warehouse.duckdb import DuckDBWarehouse
        return DuckDBWarehouse(target, **options)
    if target.type == "postgres":
        from mage_dbt.warehouse.postgres import PostgresWarehouse
        return PostgresWarehouse(target, **options)
    if target.type == "bigquery":
        from mage_dbt.warehouse.bigquery import BigQueryWarehouse
        return BigQueryWarehouse(target, **options)
    raise ConfigError(f"target {target.target_name!r} has type {target.type!r}, which warehouse "
                      f"I/O does not support (supported: {', '.join(SUPPORTED_TYPES)})")
