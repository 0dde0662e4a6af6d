"""Targeted full refresh: only the selected incremental models are rebuilt (plus downstream models when
asked, after them), snapshots only when asked; the same through the flow's run parameters (what a
Prefect UI form sends) and for a dbt project that has no pipeline file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.support import refresh as r
from tests.support.runs import checksum, flow_run, flow_run_id, task_runs

ORDERS_MARKER = ("insert into {schema}.fct_orders (order_id, customer_id, order_date, status, status_updated_at, "
                 "amount_paid, payment_count, loaded_for_date) values (-1, -1, '1999-01-01', 'placed', "
                 "'1999-01-01 00:00:00', 0, 0, '1999-01-01')")
REVENUE_MARKER = ("insert into {schema}.fct_daily_revenue (revenue_date, orders_placed, ordering_customers, "
                  "payments_captured, revenue) values ('1999-01-01', 0, 0, 0, 0)")
ORDERS_MARKED = "select count(*) from {schema}.fct_orders where order_id = -1"
REVENUE_MARKED = "select count(*) from {schema}.fct_daily_revenue where revenue_date = '1999-01-01'"
SNAPSHOT = "main_snapshots.customers_snapshot"


def built_day_one(project):
    backend = r.make_backend("duckdb", project, None)
    pipeline = r.write_pipeline(project)
    r.ok(backend.cli("run", pipeline, "--execution-date", "2024-02-01"))
    backend.execute(ORDERS_MARKER)
    backend.execute(REVENUE_MARKER)
    return backend, pipeline


def run_pipeline_flow(project, **parameters) -> dict:
    """Run `pipeline_flow` with these parameters in a fresh process, as a deployment run would."""
    script = (
        "import json, os, sys\n"
        "from mage_dbt.errors import MageDbtError\n"
        "from mage_dbt.flows import pipeline_flow\n"
        "from mage_dbt.runs.prefect_setup import run_flow_quietly\n"
        "try:\n"
        "    out = run_flow_quietly(pipeline_flow, **json.loads(sys.argv[1]))\n"
        "except MageDbtError as exc:\n"
        "    out = {'error': exc.one_line()}\n"
        "print(json.dumps(out, default=str))\n"
        "sys.stdout.flush()\n"
        "os._exit(0)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MAGE_DBT_DATA_DIR"}
    done = subprocess.run([sys.executable, "-c", script, json.dumps(parameters)], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_downstream_models_run_after_the_rebuilt_model_and_nothing_else(demo_project):
    backend, pipeline = built_day_one(demo_project)
    orders = backend.table_checksum("fct_orders")

    result = backend.cli("full-refresh", pipeline, "--select", "fct_daily_revenue", "--downstream",
                         "--execution-date", "2024-02-01")
    r.ok(result)
    assert set(task_runs(flow_run_id(result.stdout))) == {"fct_daily_revenue", "mart_monthly_revenue"}
    assert "dbt invocations: 2" in result.stdout  # --full-refresh for one, then its downstream without
    assert backend.query(REVENUE_MARKED) == [(0,)]  # rebuilt from scratch
    assert backend.query("select count(*) from {schema}.fct_daily_revenue") == [(1,)]
    # The mart was built after the rebuild: the marker's month is gone from it too.
    assert backend.query("select count(*) from {schema}.mart_monthly_revenue where revenue_month < '2000-01-01'") == [(0,)]
    assert backend.table_checksum("fct_orders") == orders and backend.query(ORDERS_MARKED) == [(1,)]


def test_run_parameters_full_refresh_select_split_the_group(demo_project):
    backend, pipeline = built_day_one(demo_project)

    summary = run_pipeline_flow(demo_project, pipeline=pipeline, execution_date="2024-02-02", full_refresh=True,
                                full_refresh_select=["fct_orders"])
    assert summary.get("state") == "COMPLETED", summary
    assert summary["dbt_invocations"] == 3  # upstream nodes, fct_orders with --full-refresh, its downstream
    assert backend.query(ORDERS_MARKED) == [(0,)]  # rebuilt
    assert backend.query(REVENUE_MARKED) == [(1,)]  # ran incrementally: the marker survives
    assert backend.query("select count(*) from {schema}.fct_daily_revenue") == [(3,)]
    parameters = flow_run(summary["flow_run_id"]).parameters
    assert parameters["full_refresh_select"] == ["fct_orders"] and parameters["full_refresh"] is True

    refused = run_pipeline_flow(demo_project, pipeline=pipeline, execution_date="2024-02-03",
                                full_refresh_select=["fct_orders"])
    assert "full_refresh is false" in refused.get("error", ""), refused
    assert backend.query("select count(*) from {schema}.fct_daily_revenue where revenue_date = '2024-02-03'") == [(0,)]


def test_full_refresh_of_a_dbt_project_without_pipeline_file(demo_project):
    backend, pipeline = built_day_one(demo_project)
    (demo_project / "flows" / "demo.yaml").unlink()  # "demo" now names only the dbt project
    revenue = backend.table_checksum("fct_daily_revenue")

    result = backend.cli("full-refresh", "demo", "--select", "fct_orders", "--execution-date", "2024-02-01")
    r.ok(result)
    run_id = flow_run_id(result.stdout)
    assert set(task_runs(run_id)) == {"fct_orders"}
    assert flow_run(run_id).parameters["dbt_project"] == "demo"
    assert backend.query(ORDERS_MARKED) == [(0,)]
    assert backend.table_checksum("fct_daily_revenue") == revenue


def test_snapshots_are_rebuilt_only_when_asked_and_restored_on_failure(demo_project):
    backend, pipeline = built_day_one(demo_project)
    backend.execute(f"insert into {SNAPSHOT} (customer_id) values (-1)")

    refused = backend.cli("full-refresh", pipeline, "--select", "customers_snapshot")
    r.ok(refused, 2)
    assert "--include-snapshots" in r.error_line(refused)
    assert backend.query(f"select count(*) from {SNAPSHOT} where customer_id = -1") == [(1,)]

    rebuilt = backend.cli("full-refresh", pipeline, "--select", "customers_snapshot", "--include-snapshots")
    r.ok(rebuilt)
    assert set(task_runs(flow_run_id(rebuilt.stdout))) == {"customers_snapshot"}
    assert backend.query(f"select count(*) from {SNAPSHOT} where customer_id = -1") == [(0,)]
    assert backend.query(f"select count(*) from {SNAPSHOT}") == backend.query("select count(*) from {schema}.stg_customers")
    backend.execute(f"insert into {SNAPSHOT} (customer_id) values (-1)")
    before = checksum(backend.query(f"select * from {SNAPSHOT}"))

    yml = demo_project / "dbt_projects" / "demo" / "snapshots" / "customers_snapshot.yml"
    yml.write_text(yml.read_text().replace("updated_at: updated_at", "updated_at: no_such_column"))
    failed = backend.cli("full-refresh", pipeline, "--select", "customers_snapshot", "--include-snapshots")
    r.ok(failed, 1)
    assert checksum(backend.query(f"select * from {SNAPSHOT}")) == before  # put back as it was, marker row included
    leftovers = backend.query("select table_name from information_schema.tables where table_name like '%mage_dbt_prev'")
    assert leftovers == []


def test_downstream_models_are_skipped_when_the_rebuild_fails(demo_project):
    backend, pipeline = built_day_one(demo_project)
    dim = backend.table_checksum("dim_customers")
    r.edit_model(demo_project, "customer_ltv_daily", r.LTV_LAST_COLUMN,
                 r.LTV_LAST_COLUMN.replace("\n", ",\n    cast('boom' as integer) as broken\n"))

    result = backend.cli("full-refresh", pipeline, "--select", "customer_ltv_daily", "--downstream",
                         "--execution-date", "2024-02-01")
    r.ok(result, 1)
    runs = task_runs(flow_run_id(result.stdout))
    assert runs["customer_ltv_daily"].state.type.value == "FAILED"
    assert runs["dim_customers"].state.name == "Skipped"  # never ran on a failed rebuild
    assert backend.table_checksum("dim_customers") == dim
