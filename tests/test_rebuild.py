"""`mage-dbt rebuild`: a full refresh for the first date, then every later date in order, each a child
flow run in one process, so a model whose logic depends on the execution date (customer_ltv_daily is
cumulative) ends up exactly as if it had run every day; a failing date stops the rebuild there."""

from __future__ import annotations

from tests.support import refresh as r
from tests.support.runs import checksum, flow_run_id, task_runs

DAYS = ("2024-02-01", "2024-02-02", "2024-02-03")
LTV_ORIGINAL = "as_of_date, customer_id, lifetime_orders, lifetime_revenue, first_order_date, last_order_date"


def child_runs(parent: str) -> list:
    """The child flow runs of `parent`, in the order they ran."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent])),
            sort=FlowRunSort.START_TIME_ASC, limit=50,
        )
    return list(runs)


def test_rebuild_reproduces_the_daily_history(demo_project):
    backend = r.make_backend("duckdb", demo_project, None)
    pipeline = r.write_pipeline(demo_project)
    for day in DAYS:
        r.ok(backend.cli("run", pipeline, "--execution-date", day))
    history = checksum(backend.query(f"select {LTV_ORIGINAL} from {{schema}}.customer_ltv_daily"))
    others = {t: backend.table_checksum(t) for t in ("fct_orders", "fct_daily_revenue", "dim_customers")}
    r.add_ltv_column(demo_project)

    result = backend.cli("rebuild", pipeline, "--select", "customer_ltv_daily", "--start", DAYS[0], "--end", DAYS[-1])
    r.ok(result)
    assert "3 of 3 dates completed" in result.stdout
    children = child_runs(flow_run_id(result.stdout))
    assert [c.parameters["execution_date"][:10] for c in children] == list(DAYS)
    assert [c.parameters["full_refresh"] for c in children] == [True, False, False]
    assert all(c.state.type.value == "COMPLETED" for c in children)
    assert all(set(task_runs(str(c.id))) == {"customer_ltv_daily"} for c in children)

    assert checksum(backend.query(f"select {LTV_ORIGINAL} from {{schema}}.customer_ltv_daily")) == history
    assert backend.query(
        "select count(*) from {schema}.customer_ltv_daily "
        "where lifetime_revenue_cents is null or lifetime_revenue_cents <> lifetime_revenue * 100"
    ) == [(0,)]
    assert {t: backend.table_checksum(t) for t in others} == others


def test_rebuild_stops_at_the_first_failing_date(demo_project):
    backend = r.make_backend("duckdb", demo_project, None)
    pipeline = r.write_pipeline(demo_project)
    r.ok(backend.cli("run", pipeline, "--execution-date", DAYS[0]))
    # The model now fails for the second date only (a cast error the warehouse raises).
    r.edit_model(demo_project, "customer_ltv_daily", r.LTV_LAST_COLUMN, r.LTV_LAST_COLUMN.replace(
        "\n", ",\n    cast(case when {{ execution_date() }} = cast('2024-02-02' as date) then 'boom' else '1' end"
              " as integer) as day_check\n"))

    result = backend.cli("rebuild", pipeline, "--select", "customer_ltv_daily", "--start", DAYS[0], "--end", DAYS[-1])
    r.ok(result, 1)
    assert "1 of 3 dates completed" in result.stdout
    children = child_runs(flow_run_id(result.stdout))
    assert [c.state.type.value for c in children] == ["COMPLETED", "FAILED"]  # the third date never started
    assert backend.query("select distinct cast(as_of_date as varchar) from {schema}.customer_ltv_daily") == [(DAYS[0],)]


def test_rebuild_rejects_a_reversed_range_before_anything_runs(demo_project):
    backend = r.make_backend("duckdb", demo_project, None)
    pipeline = r.write_pipeline(demo_project)
    result = backend.cli("rebuild", pipeline, "--select", "customer_ltv_daily", "--start", DAYS[2], "--end", DAYS[0])
    r.ok(result, 2)
    assert "before its start" in r.error_line(result)
    assert not (demo_project / ".mage_dbt" / "demo.duckdb").exists()
