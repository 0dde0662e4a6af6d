"""The mixed demo pipeline end to end on DuckDB and Postgres: a Python loader and exporter land the
day's orders in the dbt source's table, dbt builds the models in one invocation, a SQL block
reconciles revenue and a Python exporter writes the day's Parquet report. Re-running a date
replaces its landed partition (same rows), and a check that does not reconcile fails its block."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.conftest import cli
from tests.support import demo_data, postgres
from tests.support.block_pipelines import states, statuses, summary
from tests.support.runs import checksum, duckdb_rows, task_runs

DAY = "2024-02-01"
PY_SQL_BLOCKS = ("load_orders", "land_orders", "check_revenue", "export_report")


@pytest.fixture(params=["duckdb", "pg"])
def backend(request, demo_project):
    if request.param == "duckdb":
        return {}, [], lambda sql: duckdb_rows(demo_project, sql.format(schema="main"))
    env = request.getfixturevalue("pg_env")
    postgres.drop_schemas(env)
    return env, ["--target", "pg"], lambda sql: postgres.query(env, sql.format(schema="analytics"))


def _expected_landed(day: str) -> int:
    orders = demo_data.orders()
    return int((orders["updated_at"].dt.strftime("%Y-%m-%d") == day).sum())


def _expected_placed(day: str) -> int:
    orders = demo_data.orders()
    return int(((orders["order_date"] == day) & (orders["status"] == "placed")).sum())


def test_the_mixed_demo_lands_builds_checks_and_reports(demo_project, backend):
    env, flags, query = backend
    first = cli(demo_project, "run", "demo", "--execution-date", DAY, *flags, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run_id, data = summary(demo_project, first.stdout)
    assert set(statuses(data).values()) == {"success"}
    assert data["dbt_invocations"] == 1  # the whole dbt selection, after the landing block
    got = states(task_runs(run_id))
    assert {b: got[b] for b in PY_SQL_BLOCKS} == dict.fromkeys(PY_SQL_BLOCKS, ("COMPLETED", "Completed"))

    landed = query("select * from {schema}_landing.orders")
    assert len(landed) == _expected_landed(DAY) > 0
    daily = query(f"select orders_placed from {{schema}}.landed_orders_daily where change_date = '{DAY}'")
    assert daily == [(_expected_placed(DAY),)]

    # The check block's DataFrame, previewed by another process; the report it fed.
    shown = cli(demo_project, "output", "demo", "check_revenue", env=env)
    assert shown.returncode == 0, shown.stderr
    assert "1 rows" in shown.stdout and "reconciled" in shown.stdout and f"run {run_id}" in shown.stdout
    report = pd.read_parquet(demo_project / ".mage_dbt" / "reports" / "demo" / f"revenue_{DAY}.parquet")
    assert report["reconciled"].tolist() == [True]
    assert int(report["orders_placed"][0]) == int(report["landed_orders_placed"][0]) == _expected_placed(DAY)

    # Same date again: the landed partition is replaced, not appended.
    again = cli(demo_project, "run", "demo", "--execution-date", DAY, *flags, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert checksum(query("select * from {schema}_landing.orders")) == checksum(landed)
    assert query(f"select count(*) from {{schema}}.landed_orders_daily where change_date = '{DAY}'") == [(1,)]


def test_a_check_that_does_not_reconcile_fails_its_block(demo_project):
    first = cli(demo_project, "run", "demo", "--execution-date", DAY)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    import duckdb

    with duckdb.connect(str(demo_project / ".mage_dbt" / "demo.duckdb")) as conn:
        conn.execute("update main.landed_orders_daily set orders_placed = orders_placed - 1")

    check = cli(demo_project, "run", "demo", "--execution-date", DAY, "--select", "check_revenue", "--select", "export_report")
    assert check.returncode == 1, check.stdout[-3000:]
    _, data = summary(demo_project, check.stdout)
    assert statuses(data) == {"check_revenue": "failed", "export_report": "skipped"}
    message = data["results"]["check_revenue"]["message"]
    assert "block 'check_revenue' (flows/demo/check_revenue.sql): check 'reconciled' failed in 1 of 1 row(s)" in message
    assert "reconciled=False" in message
