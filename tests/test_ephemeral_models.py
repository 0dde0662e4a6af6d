"""Ephemeral models (issue 13): dbt compiles them into the models that ref them and never runs them,
so they are blocks in `mage-dbt blocks` (marked "ephemeral: compiled into ...") but get no task run
and no row in the run's summary; edges through them still order and link the blocks around them;
every invocation of a process inlines them afresh (a backfill in one process); compiling one that
fails fails that block, and `retry` re-runs it but never an ephemeral model that compiled."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.conftest import cli
from tests.support.block_pipelines import statuses, summary
from tests.support.dbt_changes import invocations, write
from tests.support.fixture_projects import SHOP, copy_fixture, expected_daily_sales, shop_duckdb
from tests.support.runs import task_runs

EPHEMERAL = {"stg_sales", "sales_of_day"}
RAN = {"raw_sales", "daily_sales", "customer_totals", "large_sales", "customer_snapshot",
       "not_null_daily_sales_sold_on", "unique_daily_sales_sold_on", "unique_customer_totals_customer"}


@pytest.fixture
def shop(tmp_path):
    return copy_fixture("shop_mixed", tmp_path / "shop")


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _daily_sales(project):
    rows = shop_duckdb(project, "select cast(sold_on as varchar), sales, revenue, large_sales "
                                "from daily_sales order by 1")
    return [(day, sales, Decimal(str(revenue)), large) for day, sales, revenue, large in rows]


def test_ephemeral_models_are_blocks_without_task_runs(shop):
    listing = _ok(cli(shop, "blocks", "shop"))
    lines = {line.split("│")[1].strip(): line for line in listing.stdout.splitlines() if line.startswith("│")}
    assert "ephemeral: compiled into customer_totals, daily_sales, large_sales" in lines["stg_sales"]
    assert "ephemeral: compiled into daily_sales" in lines["sales_of_day"]
    assert "dbt_model" in lines["stg_sales"] and "ephemeral" not in lines["daily_sales"]

    result = _ok(cli(shop, "run", "shop", "--execution-date", "2024-01-02"))
    run_id, data = summary(shop, result.stdout)
    assert statuses(data) == {name: "success" for name in RAN}  # no row for an ephemeral model
    assert data["ephemeral"] == {name: "success" for name in EPHEMERAL}
    assert f"{len(RAN)} blocks: {len(RAN)} success; dbt invocations: 1" in result.stdout
    assert "ephemeral models, compiled into the models that ref them (not run): sales_of_day, stg_sales" \
        in result.stdout

    runs = task_runs(run_id)
    assert set(runs) == RAN
    assert {run.state.name for run in runs.values()} == {"Completed"}
    # daily_sales reads raw_sales through two ephemeral models: its task run links to raw_sales
    upstream = {str(i.id) for i in runs["daily_sales"].task_inputs["upstream"]}
    assert upstream == {str(runs["raw_sales"].id)}

    assert _daily_sales(shop) == expected_daily_sales(["2024-01-02"])


def test_every_interval_of_a_backfill_inlines_the_ephemeral_models_afresh(shop):
    """One process, one parsed manifest, three dbt invocations: each compiles the ephemeral models
    with its own execution date (dbt keeps compiled state on the shared manifest's nodes)."""
    days = ["2024-01-01", "2024-01-02", "2024-01-03"]
    result = _ok(cli(shop, "backfill", "shop", "--start", days[0], "--end", days[-1]))
    assert "3 completed" in result.stdout
    builds = [r for r in invocations(shop) if r["command"] == "build"]
    assert len(builds) == 3 and all(r["success"] for r in builds), builds
    assert len({r["pid"] for r in builds}) == 1
    assert _daily_sales(shop) == expected_daily_sales(days)


def test_a_failing_ephemeral_model_fails_and_retry_reruns_it_but_not_the_ones_that_compiled(shop):
    model = SHOP / "models" / "staging" / "sales_of_day.sql"
    good = (shop / model).read_text()
    write(shop, str(model), good.replace('var("execution_date")', 'var("no_such_var")'))

    failed = cli(shop, "run", "shop", "--execution-date", "2024-01-02")
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    run_id, data = summary(shop, failed.stdout)
    got = statuses(data)
    assert got.pop("sales_of_day") == "failed"
    assert "no_such_var" in data["results"]["sales_of_day"]["message"]
    assert {got.pop(n) for n in ("daily_sales", "not_null_daily_sales_sold_on", "unique_daily_sales_sold_on")} \
        == {"skipped"}
    assert got == {name: "success" for name in RAN - {"daily_sales", "not_null_daily_sales_sold_on",
                                                      "unique_daily_sales_sold_on"}}
    assert data["ephemeral"] == {"stg_sales": "success"}  # compiled for customer_totals and large_sales
    runs = task_runs(run_id)
    assert runs["sales_of_day"].state.type.value == "FAILED" and "stg_sales" not in runs

    write(shop, str(model), good)
    retried = _ok(cli(shop, "retry", "shop"))
    assert "retrying 4 of 9 blocks" in retried.stdout, retried.stdout[-2000:]
    assert "daily_sales, not_null_daily_sales_sold_on, sales_of_day, unique_daily_sales_sold_on" in \
        " ".join(retried.stdout.split()), retried.stdout[:1000]
    new_id, new = summary(shop, retried.stdout)
    assert statuses(new) == {n: "success" for n in ("daily_sales", "not_null_daily_sales_sold_on",
                                                    "unique_daily_sales_sold_on")}
    assert new["ephemeral"] == {"sales_of_day": "success"}  # stg_sales compiled inline, not re-selected
    last = [r for r in invocations(shop) if r["command"] == "build"][-1]
    assert last["nodes"] == 4 and last["success"], last
    assert _daily_sales(shop) == expected_daily_sales(["2024-01-02"])
