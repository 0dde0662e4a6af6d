"""Drift detection end to end on DuckDB and PostgreSQL, and the on_drift policies.

The done-when flow: a clean project reports no drift → a column is added to an incremental model →
`status` names it → a run with on_drift: fail stops before anything ran, naming the exact command →
that command rebuilds only that model (other relations keep their identity, a marker row survives)
→ `rebuild` fills the new column for the whole history.
"""

from __future__ import annotations

import pytest

from tests.support import refresh as r
from tests.support.runs import flow_run_id, task_runs

OTHER_TABLES = ("fct_orders", "fct_daily_revenue", "dim_customers", "mart_monthly_revenue")
LTV_ORIGINAL = "as_of_date, customer_id, lifetime_orders, lifetime_revenue, first_order_date, last_order_date"
MARKER = ("insert into {schema}.fct_daily_revenue (revenue_date, orders_placed, ordering_customers, "
          "payments_captured, revenue) values ('1999-01-01', 0, 0, 0, 0)")


@pytest.fixture(params=["duckdb", "pg"])
def backend(request, demo_project):
    pg_env = request.getfixturevalue("pg_env") if request.param == "pg" else None
    return r.make_backend(request.param, demo_project, pg_env)


def status_rows(result) -> dict[str, str]:
    """model -> its whole table line in `mage-dbt status` output."""
    return {m: next((line for line in result.stdout.splitlines() if f" {m} " in line), "") for m in r.INCREMENTAL}


def test_drift_is_detected_refused_fixed_and_history_refilled(backend):
    pipeline = r.write_pipeline(backend.project)
    for day in ("2024-02-01", "2024-02-02"):
        r.ok(backend.cli("run", pipeline, "--execution-date", day))

    clean = backend.cli("status", pipeline)
    r.ok(clean)
    assert all("up to date" in line for line in status_rows(clean).values()), clean.stdout

    backend.execute(MARKER)
    identities = {t: backend.identity(t) for t in OTHER_TABLES}
    ltv_history = r.rows_by(backend, "customer_ltv_daily", LTV_ORIGINAL, "1, 2")
    r.add_ltv_column(backend.project)

    drifted = backend.cli("status", pipeline)
    r.ok(drifted)
    rows = status_rows(drifted)
    assert "drifted" in rows["customer_ltv_daily"] and "added lifetime_revenue_cents" in rows["customer_ltv_daily"]
    assert "bigint" in rows["customer_ltv_daily"].lower(), rows
    assert "up to date" in rows["fct_orders"] and "up to date" in rows["fct_daily_revenue"], drifted.stdout

    refused = backend.cli("run", pipeline, "--execution-date", "2024-02-03")
    r.ok(refused, 2)
    line = r.error_line(refused)
    assert "customer_ltv_daily" in line and "lifetime_revenue_cents" in line, line
    command = r.fix_command(refused)
    # customer_ltv_daily reads var('execution_date'): the command names the refused run's date.
    expected = ["full-refresh", pipeline, "--select", "customer_ltv_daily", "-d", "2024-02-03"] + backend.flags
    assert command == expected, line
    # Nothing ran: no row for the refused date, every table as it was.
    assert backend.query("select count(*) from {schema}.fct_daily_revenue where revenue_date = '2024-02-03'") == [(0,)]
    assert {t: backend.identity(t) for t in OTHER_TABLES} == identities

    from tests.conftest import cli

    fixed = cli(backend.project, *command, "--execution-date", "2024-02-02", env=backend.env)  # the last date wins
    r.ok(fixed)
    assert set(task_runs(flow_run_id(fixed.stdout))) == {"customer_ltv_daily"}
    assert {t: backend.identity(t) for t in OTHER_TABLES} == identities  # untouched, marker row included
    assert backend.query("select count(*) from {schema}.fct_daily_revenue where revenue_date = '1999-01-01'") == [(1,)]
    assert "lifetime_revenue_cents" in backend.columns("customer_ltv_daily")
    # A full refresh for one date keeps only that date's snapshot: the history needs `rebuild`.
    assert backend.query("select distinct cast(as_of_date as varchar) from {schema}.customer_ltv_daily") == [("2024-02-02",)]
    assert all("up to date" in v for v in status_rows(backend.cli("status", pipeline)).values())

    rebuilt = backend.cli("rebuild", pipeline, "--select", "customer_ltv_daily", "--start", "2024-02-01", "--end", "2024-02-02")
    r.ok(rebuilt)
    assert r.rows_by(backend, "customer_ltv_daily", LTV_ORIGINAL, "1, 2") == ltv_history
    assert backend.query(
        "select count(*), count(lifetime_revenue_cents), "
        "sum(case when lifetime_revenue_cents = lifetime_revenue * 100 then 1 else 0 end) "
        "from {schema}.customer_ltv_daily"
    ) == [(len(ltv_history), len(ltv_history), len(ltv_history))]
    assert {t: backend.identity(t) for t in OTHER_TABLES} == identities


def test_on_drift_full_refresh_rebuilds_in_the_run_and_warn_runs_anyway(demo_project):
    backend = r.make_backend("duckdb", demo_project, None)
    pipeline = r.write_pipeline(demo_project, on_drift="full_refresh")
    r.ok(backend.cli("run", pipeline, "--execution-date", "2024-02-01"))
    backend.execute(MARKER)
    orders = backend.identity("fct_orders")
    r.add_ltv_column(demo_project)

    run = backend.cli("run", pipeline, "--execution-date", "2024-02-02")
    r.ok(run)
    assert "lifetime_revenue_cents" in backend.columns("customer_ltv_daily")
    assert backend.query("select distinct cast(as_of_date as varchar) from {schema}.customer_ltv_daily") == [("2024-02-02",)]
    assert backend.query("select count(*) from {schema}.fct_daily_revenue where revenue_date = '1999-01-01'") == [(1,)]
    assert backend.query("select count(*) from {schema}.fct_daily_revenue") == [(3,)]  # marker + 2 days
    assert orders != backend.identity("fct_orders")  # it ran incrementally for the new date
    assert "dbt invocations: 3" in run.stdout  # upstream, the rebuilt model, its downstream

    r.write_pipeline(demo_project, on_drift="warn")
    r.edit_model(demo_project, "customer_ltv_daily", r.LTV_NEW_COLUMN,
                 r.LTV_NEW_COLUMN.replace("lifetime_revenue_cents\n", "lifetime_revenue_cents,\n    1 as extra\n"))
    warned = backend.cli("run", pipeline, "--execution-date", "2024-02-03")
    r.ok(warned, 1)  # the run went ahead; dbt's on_schema_change='fail' then failed that model only
    failed = [line for line in warned.stdout.splitlines() if " failed " in line]
    assert any("customer_ltv_daily" in line for line in failed), warned.stdout[-3000:] + warned.stderr[-3000:]
    assert backend.query("select count(*) from {schema}.fct_daily_revenue where revenue_date = '2024-02-03'") == [(1,)]


@pytest.mark.parametrize("backend_name", ["duckdb", "pg"])
def test_status_names_removed_and_type_changed_columns(backend_name, demo_project, request):
    pg_env = request.getfixturevalue("pg_env") if backend_name == "pg" else None
    backend = r.make_backend(backend_name, demo_project, pg_env)
    pipeline = r.write_pipeline(demo_project)
    before = backend.cli("status", pipeline)
    r.ok(before)
    assert all("not built" in line for line in status_rows(before).values()), before.stdout

    r.ok(backend.cli("run", pipeline, "--execution-date", "2024-02-01"))
    r.edit_model(demo_project, "fct_orders", "    coalesce(p.payment_count, 0) as payment_count,\n", "")
    r.edit_model(demo_project, "fct_orders", "cast(coalesce(p.amount_paid, 0) as numeric(12, 2)) as amount_paid",
                 "cast(coalesce(p.amount_paid, 0) as numeric(14, 2)) as amount_paid")
    result = backend.cli("status", pipeline, "--execution-date", "2024-02-01")
    r.ok(result)
    line = status_rows(result)["fct_orders"]
    assert "drifted" in line and "removed payment_count" in line, result.stdout
    assert "type changed amount_paid" in line and "(14,2)" in line and "(12,2)" in line, result.stdout
    assert "rebuild: mage-dbt full-refresh daily --select fct_orders" in result.stdout


def test_type_normalization_matches_both_spellings():
    from mage_dbt.refresh.drift import compare_columns, normalize_type

    same = [("character varying(20)", "VARCHAR"), ("text", "varchar"), ("int4", "INTEGER"), ("int8", "bigint"),
            ("DECIMAL(12,2)", "numeric(12, 2)"), ("timestamp without time zone", "TIMESTAMP"),
            ("double precision", "float8"), ("bool", "BOOLEAN"), ("timestamp with time zone", "timestamptz")]
    for left, right in same:
        assert normalize_type(left) == normalize_type(right), (left, right)
    for left, right in [("integer", "bigint"), ("numeric(12,2)", "numeric(14,2)"), ("date", "timestamp")]:
        assert normalize_type(left) != normalize_type(right), (left, right)
    added, removed, changed = compare_columns(
        {"ID": "int4", "name": "varchar(10)", "gone": "date"}, {"id": "integer", "name": "text", "new": "bigint"}
    )
    assert (added, removed, changed) == ((("new", "bigint"),), (("gone", "date"),), ())
