"""The demo pipeline end to end on DuckDB and PostgreSQL: per-node Prefect task runs with their
real states, idempotent re-runs, and incremental models growing by exactly one date's rows."""

from __future__ import annotations

import json

import pytest

from tests.conftest import cli
from tests.support import demo_data, postgres
from tests.support.runs import checksum, duckdb_rows, flow_run, flow_run_id, task_runs

INCREMENTAL = ("fct_orders", "fct_daily_revenue", "customer_ltv_daily")


def _query(backend, project, pg_env):
    if backend == "duckdb":
        return lambda sql: duckdb_rows(project, sql.format(schema="main"))
    return lambda sql: postgres.query(pg_env, sql.format(schema="analytics"))


@pytest.fixture(params=["duckdb", "pg"])
def backend(request):
    return request.param


@pytest.fixture
def target_env(backend, request):
    if backend == "duckdb":
        return {}, []
    env = request.getfixturevalue("pg_env")
    _reset_pg_schemas(env)
    return env, ["--target", "pg"]


def _reset_pg_schemas(env):
    postgres.drop_schemas(env, ("analytics", "analytics_raw", "analytics_snapshots"))


def test_demo_runs_incrementally_and_idempotently(demo_project, target_env, backend):
    env, flags = target_env
    query = _query(backend, demo_project, env)

    first = cli(demo_project, "run", "demo", "--execution-date", "2024-02-01", *flags, env=env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    counts_1 = {t: query(f"select count(*) from {{schema}}.{t}")[0][0] for t in INCREMENTAL}
    assert counts_1["fct_daily_revenue"] == 1
    assert counts_1["fct_orders"] == demo_data.expected_fct_orders_rows(["2024-02-01"])
    assert counts_1["customer_ltv_daily"] == demo_data.expected_ltv_rows(["2024-02-01"])
    sums_1 = {t: checksum(query(f"select * from {{schema}}.{t}")) for t in INCREMENTAL}

    # Per-node task runs with their real final states, read back through the Prefect API.
    run_id = flow_run_id(first.stdout)
    runs = task_runs(run_id)
    assert {"stg_orders", "fct_orders", "raw_orders", "customers_snapshot"} <= set(runs)
    assert all(r.state.type.value == "COMPLETED" for r in runs.values()), {
        n: r.state.type.value for n, r in runs.items() if r.state.type.value != "COMPLETED"
    }
    summary = json.loads((demo_project / ".mage_dbt" / "runs" / run_id / "summary.json").read_text())
    assert set(runs) == set(summary["results"])  # one task run per block, none missing
    assert summary["dbt_invocations"] == 1  # the whole dbt selection ran as one invocation
    assert flow_run(run_id).parameters["execution_date"].startswith("2024-02-01")

    again = cli(demo_project, "run", "demo", "--execution-date", "2024-02-01", *flags, env=env)
    assert again.returncode == 0, again.stdout[-3000:]
    assert {t: checksum(query(f"select * from {{schema}}.{t}")) for t in INCREMENTAL} == sums_1

    second = cli(demo_project, "run", "demo", "--execution-date", "2024-02-02", *flags, env=env)
    assert second.returncode == 0, second.stdout[-3000:]
    counts_2 = {t: query(f"select count(*) from {{schema}}.{t}")[0][0] for t in INCREMENTAL}
    assert counts_2["fct_daily_revenue"] == 2
    assert counts_2["fct_orders"] == demo_data.expected_fct_orders_rows(["2024-02-01", "2024-02-02"])
    assert counts_2["customer_ltv_daily"] == demo_data.expected_ltv_rows(["2024-02-01", "2024-02-02"])
    dates = query("select distinct revenue_date from {schema}.fct_daily_revenue order by 1")
    assert [str(d[0]) for d in dates] == ["2024-02-01", "2024-02-02"]
