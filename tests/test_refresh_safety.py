"""Safety: a full refresh that fails mid-way on PostgreSQL leaves the old table answering with its old rows
and columns (dbt-postgres builds into an intermediate relation and swaps in one transaction), and the
drift probe never runs the model's query. Bad input fails in one line, before anything is touched."""

from __future__ import annotations

import pytest

from tests.support import refresh as r

ORDERS_MARKER = ("insert into {schema}.fct_orders (order_id, customer_id, order_date, status, status_updated_at, "
                 "amount_paid, payment_count, loaded_for_date) values (-1, -1, '1999-01-01', 'placed', "
                 "'1999-01-01 00:00:00', 0, 0, '1999-01-01')")


def test_failed_full_refresh_keeps_the_old_table_on_postgres(demo_project, pg_env):
    backend = r.make_backend("pg", demo_project, pg_env)
    pipeline = r.write_pipeline(demo_project)
    r.ok(backend.cli("run", pipeline, "--execution-date", "2024-02-01"))
    backend.execute(ORDERS_MARKER)
    oid = backend.identity("fct_orders")
    columns = backend.columns("fct_orders")
    rows = backend.table_checksum("fct_orders")
    ids = [i for (i,) in backend.query("select order_id from {schema}.fct_orders where order_id > 0 order by 1")]
    assert len(ids) >= 2
    # A new column whose expression fails at run time, for one row in the middle of the build only.
    bad = ids[len(ids) // 2]
    r.edit_model(demo_project, "fct_orders", "    {{ execution_date() }} as loaded_for_date\n",
                 "    {{ execution_date() }} as loaded_for_date,\n"
                 f"    cast(case when c.order_id = {bad} then 'boom' else '1' end as integer) as check_flag\n")

    # The drift probe asks Postgres for the query's columns without running it: no 'boom' error here.
    status = backend.cli("status", pipeline, "--execution-date", "2024-02-01")
    r.ok(status)
    assert "added check_flag (integer)" in status.stdout, status.stdout

    failed = backend.cli("full-refresh", pipeline, "--select", "fct_orders", "--execution-date", "2024-02-01")
    r.ok(failed, 1)
    assert "boom" in failed.stdout, failed.stdout  # it really failed while building rows
    assert backend.identity("fct_orders") == oid  # the very same relation ...
    assert backend.columns("fct_orders") == columns  # ... with its old columns ...
    assert backend.table_checksum("fct_orders") == rows  # ... and its old rows, marker included
    leftovers = backend.query("select relname from pg_class where relname like 'fct_orders%' and relname <> 'fct_orders'")
    assert leftovers == [], leftovers  # no intermediate or backup relation left behind


@pytest.mark.parametrize(
    "args, expected",
    [
        (("full-refresh", "daily", "--select", "dim_customers"),
         "matches no incremental model of 'daily' (it matches dim_customers)"),
        (("full-refresh", "nosuch", "--select", "fct_orders"), "neither a pipeline"),
        (("full-refresh", "daily", "--select", "tag:nonexistent"), "matches no block of pipeline 'daily'"),
        (("status", "nosuch"), "unknown pipeline 'nosuch'"),
    ],
)
def test_bad_input_fails_in_one_line_before_anything_runs(demo_project, args, expected):
    r.write_pipeline(demo_project)
    result = r.cli(demo_project, *args)
    r.ok(result, 2)
    assert expected in r.error_line(result)
    assert not (demo_project / ".mage_dbt" / "demo.duckdb").exists()  # no warehouse touched
    assert not (demo_project / ".mage_dbt" / "runs").exists()  # no flow run
