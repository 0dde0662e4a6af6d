"""Reuse (issue 17): real dbt on DuckDB and PostgreSQL, states read through the Prefect API.

An unchanged second run reuses every dbt node (Completed states named "Reused", no dbt
invocation at all); a whitespace/comment edit changes nothing; a real change to one model runs
exactly it and its downstream; a new execution date runs the incremental models, an interval
already built is reused; a model whose macro reads `run_started_at` runs every time; `plan`
says per node what a run would do and why, without running anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.support.runs import flow_run_id, task_runs
from tests.test_backfill_support import invocations, reset_pg, write_pipeline

DAY, NEXT_DAY = "2024-01-02", "2024-01-03"
STAMP_MACRO = "{% macro build_stamp() %}cast('{{ run_started_at }}' as timestamp){% endmacro %}\n"
STAMP_MODEL = "select 1 as id, {{ build_stamp() }} as built_at\n"


def _add_stamp_model(project: Path) -> None:
    demo = project / "dbt_projects" / "demo"
    (demo / "macros" / "build_stamp.sql").write_text(STAMP_MACRO)
    (demo / "models" / "marts" / "audit_stamp.sql").write_text(STAMP_MODEL)


def _run(project: Path, *args: str, env: dict | None = None) -> str:
    result = cli(project, "run", *args, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return flow_run_id(result.stdout)


def _states(run_id: str) -> dict[str, str]:
    """Block name -> the state name of its task run (Completed, Reused, Failed, ...)."""
    return {name: run.state.name for name, run in task_runs(run_id).items()}


def _builds(project: Path, since: int) -> list[dict]:
    return [r for r in invocations(project)[since:] if r["command"] in ("build", "run")]


def _summary(project: Path, run_id: str) -> dict:
    return json.loads((project / ".mage_dbt" / "runs" / run_id / "summary.json").read_text())


def _downstream(project: Path, unique_id: str) -> set[str]:
    """Names of `unique_id` and every node downstream of it, from dbt's own manifest.json."""
    newest = max((project / ".mage_dbt" / "manifest_cache").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    child_map = json.loads(newest.read_text())["child_map"]
    found, todo = set(), [unique_id]
    while todo:
        uid = todo.pop()
        if uid not in found:
            found.add(uid)
            todo.extend(child_map.get(uid, ()))
    return {uid.split(".")[2] for uid in found}


@pytest.fixture
def reuse_project(demo_project: Path) -> Path:
    _add_stamp_model(demo_project)
    # every dbt node except what reads the landing source (a Python block writes it in the demo)
    write_pipeline(demo_project, "stable", ["*"], command="build", exclude=["source:landing+", "audit_stamp"],
                   reuse=True)
    write_pipeline(demo_project, "stamped", ["audit_stamp", "+stg_orders", "+stg_customers", "+stg_payments"],
                   command="build", reuse=True)
    return demo_project


def test_unchanged_run_reuses_every_node_then_only_changes_run(reuse_project: Path):
    project = reuse_project
    first = _run(project, "stable", "-d", DAY)
    first_states = _states(first)
    assert first_states and set(first_states.values()) == {"Completed"}, first_states
    dbt_blocks = set(first_states)

    before = len(invocations(project))
    second = _run(project, "stable", "-d", DAY)
    assert _states(second) == {name: "Reused" for name in dbt_blocks}
    assert _builds(project, before) == []  # not one dbt invocation
    assert _summary(project, second)["dbt_invocations"] == 0
    reused_run = task_runs(second)["fct_orders"]
    assert reused_run.state.type.value == "COMPLETED" and "reused" in reused_run.state.message

    # whitespace and comments are not changes
    staging = project / "dbt_projects" / "demo" / "models" / "staging" / "stg_payments.sql"
    original = staging.read_text()
    staging.write_text("-- payments, tidied\n" + original.replace("select", "select   /* the columns */\n  ", 1))
    before = len(invocations(project))
    cosmetic = _run(project, "stable", "-d", DAY)
    assert set(_states(cosmetic).values()) == {"Reused"}
    assert _builds(project, before) == []

    # a real change: exactly stg_payments and what is downstream of it runs
    staging.write_text(original.replace("payment_id,", "payment_id,\n    1 as payment_version,", 1))
    before = len(invocations(project))
    changed = _run(project, "stable", "-d", DAY)
    states = _states(changed)
    expected = _downstream(project, "model.demo.stg_payments") & dbt_blocks
    assert {"stg_payments", "fct_orders", "mart_monthly_revenue"} <= expected
    assert "stg_orders" not in expected and "customers_snapshot" not in expected
    assert {n for n, s in states.items() if s == "Completed"} == expected
    assert {n for n, s in states.items() if s == "Reused"} == dbt_blocks - expected
    [build] = _builds(project, before)
    assert build["nodes"] == len(expected)


def test_incremental_models_reuse_only_intervals_they_built(reuse_project: Path):
    project = reuse_project
    _run(project, "stable", "-d", DAY)
    new_day = _states(_run(project, "stable", "-d", NEXT_DAY))
    for model in ("fct_orders", "fct_daily_revenue", "customer_ltv_daily", "fct_payments_daily"):
        assert new_day[model] == "Completed", (model, new_day[model])
    for view in ("stg_orders", "stg_payments", "stg_customers", "raw_orders"):
        assert new_day[view] == "Reused", (view, new_day[view])

    # re-running a day already built: the incremental models are reused
    again = _states(_run(project, "stable", "-d", DAY))
    for model in ("fct_orders", "fct_daily_revenue", "customer_ltv_daily", "fct_payments_daily"):
        assert again[model] == "Reused", (model, again[model])

    # --full-refresh never reuses
    refreshed = _states(_run(project, "stable", "-d", DAY, "--full-refresh"))
    assert set(refreshed.values()) == {"Completed"}


def test_run_started_at_in_a_macro_always_runs(reuse_project: Path):
    project = reuse_project
    _run(project, "stamped", "-d", DAY)
    before = len(invocations(project))
    second = _states(_run(project, "stamped", "-d", DAY))
    assert second.pop("audit_stamp") == "Completed"
    assert second and set(second.values()) == {"Reused"}, second
    [build] = _builds(project, before)
    assert build["nodes"] == 1

    plan = cli(project, "plan", "stamped", "-d", DAY, "--json")
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    rows = _plan_rows(plan.stdout)
    assert rows["audit_stamp"][0] == "run" and "run_started_at" in rows["audit_stamp"][1]
    assert rows["stg_orders"][0] == "reuse"


def _plan_rows(stdout: str) -> dict[str, tuple[str, str]]:
    """block -> (action, reason) from the JSON lines of `mage-dbt plan --json`."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rows[row["block"]] = (row["action"], row["reason"])
    return rows


def test_reuse_off_still_records_and_no_reuse_option_wins(reuse_project: Path):
    project = reuse_project
    _run(project, "stable", "-d", DAY, "--no-reuse")
    forced = _states(_run(project, "stable", "-d", DAY, "--no-reuse"))
    assert set(forced.values()) == {"Completed"}
    # the builds made with reuse off were recorded: the next run with reuse reuses them
    assert set(_states(_run(project, "stable", "-d", DAY)).values()) == {"Reused"}


def test_reuse_setting_is_validated_with_file_and_line(reuse_project: Path):
    path = reuse_project / "flows" / "stable.yaml"
    path.write_text(path.read_text().replace("reuse: true", "reuse: sometimes"))
    result = cli(reuse_project, "plan", "stable", "-d", DAY)
    assert result.returncode == 2
    assert "stable.yaml:" in result.stderr and "'reuse'" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr

    path.write_text(path.read_text().replace("reuse: sometimes", "only_fresh_sources: {on_error: explode}"))
    result = cli(reuse_project, "plan", "stable", "-d", DAY)
    assert result.returncode == 2 and "'only_fresh_sources.on_error'" in result.stderr, result.stderr
    assert "stable.yaml:" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_postgres_unchanged_run_reuses_every_node(reuse_project: Path, pg_env):
    project = reuse_project
    reset_pg(pg_env)
    first = _states(_run(project, "stable", "-d", DAY, "--target", "pg", env=pg_env))
    assert set(first.values()) == {"Completed"}
    before = len(invocations(project))
    second = _run(project, "stable", "-d", DAY, "--target", "pg", env=pg_env)
    assert _states(second) == {name: "Reused" for name in first}
    assert _builds(project, before) == []
    # the DuckDB target has its own records: nothing built there yet, so everything runs
    other = _states(_run(project, "stable", "-d", DAY))
    assert set(other.values()) == {"Completed"}


def _plan(project: Path, *args: str, env: dict | None = None) -> dict[str, tuple[str, str]]:
    result = cli(project, "plan", *args, "--json", env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return _plan_rows(result.stdout)


def test_plan_lists_the_action_per_node_and_a_dropped_table_runs(reuse_project: Path):
    project = reuse_project
    never = _plan(project, "stable", "-d", DAY)
    assert {action for action, _ in never.values()} == {"run"}
    assert "no successful build" in never["stg_orders"][1]

    built = _states(_run(project, "stable", "-d", DAY))
    before = len(invocations(project))
    unchanged = _plan(project, "stable", "-d", DAY)
    assert set(unchanged) == set(built) and {a for a, _ in unchanged.values()} == {"reuse"}
    assert invocations(project)[before:] == []  # plan runs nothing

    staging = project / "dbt_projects" / "demo" / "models" / "staging" / "stg_payments.sql"
    staging.write_text(staging.read_text().replace("payment_id,", "payment_id,\n    2 as payment_version,", 1))
    changed = _plan(project, "stable", "-d", DAY)
    assert changed["stg_payments"] == ("run", "code changed")
    assert changed["fct_orders"][0] == "run" and "upstream changed: stg_payments" in changed["fct_orders"][1]
    assert changed["stg_orders"][0] == "reuse" and changed["customers_snapshot"][0] == "reuse"
    next_day = _plan(project, "stable", "-d", NEXT_DAY)
    assert next_day["fct_daily_revenue"][0] == "run" and "new interval" in next_day["fct_daily_revenue"][1]
    refresh = _plan(project, "stable", "-d", DAY, "--full-refresh")
    assert refresh["fct_orders"][0] == "full refresh" and refresh["stg_orders"][0] == "run"

    staging.write_text(staging.read_text().replace("    2 as payment_version,\n", "", 1))  # back as built
    import duckdb

    with duckdb.connect(str(project / ".mage_dbt" / "demo.duckdb")) as conn:
        conn.execute("drop table main.dim_customers")
    assert _plan(project, "stable", "-d", DAY)["dim_customers"] == (
        "run", "its relation main.dim_customers is not in the warehouse")
    states = _states(_run(project, "stable", "-d", DAY))
    assert states.pop("dim_customers") == "Completed"
    assert set(states.values()) == {"Reused"}, states


def test_downstream_of_a_targeted_full_refresh_is_not_reused(reuse_project: Path):
    project = reuse_project
    _run(project, "stable", "-d", DAY)
    result = cli(project, "full-refresh", "stable", "--select", "fct_daily_revenue", "-d", DAY, "--downstream")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    states = _states(flow_run_id(result.stdout))
    # the rebuilt model's table changed (a full refresh keeps only this day): what reads it runs again
    assert states["fct_daily_revenue"] == "Completed" and states["mart_monthly_revenue"] == "Completed", states
