"""Helpers shared by the backfill tests (no tests here): pipelines written into a demo copy, Prefect
flow runs of a backfill, the dbt invocation log, Postgres table checksums."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import yaml

from tests.support import postgres

INCREMENTAL_KEYS = {
    "fct_orders": ("order_id",),
    "fct_daily_revenue": ("revenue_date",),
    "customer_ltv_daily": ("as_of_date", "customer_id"),
}
PG_SCHEMAS = ("analytics", "analytics_raw", "analytics_snapshots")


def write_pipeline(project: Path, name: str, select: list[str], *, command: str = "run",
                   exclude: list[str] | None = None, **extra) -> Path:
    """Write flows/<name>.yaml into the demo COPY (never into the repository)."""
    dbt = {"project": "demo", "select": select, "command": command, **({"exclude": exclude} if exclude else {})}
    spec = {"description": f"backfill test pipeline {name}", "dbt": dbt, **extra}
    path = project / "flows" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_test_pipelines(project: Path) -> None:
    """`base`: seeds and staging views (set up once); `daily`: the three incremental models."""
    write_pipeline(project, "base", ["+stg_orders", "+stg_customers", "+stg_payments"], command="build")
    write_pipeline(project, "daily", list(INCREMENTAL_KEYS))


def backfill_ids(project: Path) -> list[str]:
    folder = project / ".mage_dbt" / "backfills"
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def flow_runs(backfill_id: str, flow_name: str = "mage-dbt-pipeline") -> list:
    """Flow runs of a backfill (by its tag), oldest first, read through the Prefect API."""
    from mage_dbt.backfill.state import read_runs

    return read_runs(backfill_id, flow_name)


def runs_by_name(backfill_id: str) -> dict[str, list[str]]:
    """Interval run name -> state types of its attempts, oldest first."""
    out: dict[str, list[str]] = {}
    for run in flow_runs(backfill_id):
        out.setdefault(run.name, []).append(run.state.type.value)
    return out


def invocations(project: Path) -> list[dict]:
    log = project / ".mage_dbt" / "logs" / "dbt_invocations.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def parses_per_process(records: list[dict]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for record in records:
        if record["command"] == "parse":
            counts[record["pid"]] = counts.get(record["pid"], 0) + 1
    return counts


def reset_pg(env: dict[str, str]) -> None:
    postgres.drop_schemas(env, PG_SCHEMAS)


def ordered_checksum(env: dict[str, str], table: str) -> tuple[int, str]:
    """Row count and checksum of a table's rows in key order (every column compared)."""
    keys = ", ".join(INCREMENTAL_KEYS[table])
    rows = postgres.query(env, f"select * from analytics.{table} order by {keys}")
    return len(rows), hashlib.sha256("\n".join(repr(r) for r in rows).encode()).hexdigest()


def duplicate_keys(env: dict[str, str], table: str) -> list[tuple]:
    keys = ", ".join(INCREMENTAL_KEYS[table])
    return postgres.query(env, f"select {keys}, count(*) from analytics.{table} group by {keys} having count(*) > 1")


def wait_for(predicate, what: str, *, timeout: float = 240, alive=None):
    """Poll `predicate` until it returns something truthy; fail after `timeout` or if `alive()` turns false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if alive is not None and not alive():
            raise AssertionError(f"process ended while waiting for {what}")
        time.sleep(0.2)  # polling interval, not synchronization
    raise AssertionError(f"timed out waiting for {what}")
