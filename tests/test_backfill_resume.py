"""Backfill runs and resumes on DuckDB: one flow run per interval tagged with the backfill, date order,
parse once, stop at the first failure (or --keep-going), resume runs only what did not complete,
a changed pipeline needs --force, `mage-dbt backfills` counts states from Prefect."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import cli
from tests.support import demo_data
from tests.support.runs import duckdb_rows
from tests.test_backfill_support import (
    backfill_ids,
    flow_runs,
    invocations,
    parses_per_process,
    runs_by_name,
    write_pipeline,
)

BROKEN_DAY = "2024-01-03"
DAYS = [f"2024-01-0{d}" for d in range(1, 6)]

CHECK_MODEL = """
{{{{ config(materialized='incremental', incremental_strategy='delete+insert', unique_key='check_date') }}}}
-- fails on {broken}: a cast of a non-number, like a bad row in real data
select {{{{ execution_date() }}}} as check_date,
       cast('{{{{ "not a number" if var("execution_date") == "{broken}" else "1" }}}}' as integer) as ok
"""


def _counts_line(listing: str, backfill_id: str) -> list[str]:
    line = next(l for l in listing.splitlines() if backfill_id in l)
    return [cell.strip() for cell in line.split("│")[1:-1]]


def test_backfill_resumes_only_unfinished_intervals(demo_project):
    project = demo_project
    model = project / "dbt_projects" / "demo" / "models" / "marts" / "daily_check.sql"
    model.write_text(CHECK_MODEL.format(broken=BROKEN_DAY))
    write_pipeline(project, "base", ["+stg_orders", "+stg_customers", "+stg_payments"], command="build")
    pipeline_file = write_pipeline(project, "daily", ["fct_daily_revenue", "customer_ltv_daily", "daily_check"])
    setup = cli(project, "run", "base", "--execution-date", "2024-01-01")
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]

    # 1. the third day fails: the backfill stops there (later dates may build on it)
    first = cli(project, "backfill", "daily", "--start", DAYS[0], "--end", DAYS[-1])
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    [backfill_id] = backfill_ids(project)
    assert f"resume with: mage-dbt backfill --resume {backfill_id}" in first.stdout
    assert runs_by_name(backfill_id) == {
        "daily-2024-01-01": ["COMPLETED"], "daily-2024-01-02": ["COMPLETED"], "daily-2024-01-03": ["FAILED"],
    }
    # one tagged parent flow run, the interval runs are its subflows, started in date order
    [parent] = flow_runs(backfill_id, "mage-dbt-backfill")
    assert parent.state.type.value == "FAILED" and parent.parameters["pipeline"] == "daily"
    children = flow_runs(backfill_id)
    assert all(run.parent_task_run_id for run in children)
    assert [r.name for r in sorted(children, key=lambda r: r.start_time)] == [f"daily-{d}" for d in DAYS[:3]]
    listing = cli(project, "backfills")
    assert listing.returncode == 0, listing.stderr[-2000:]
    # columns: id, range, intervals, states (the non-zero counts), created
    assert _counts_line(listing.stdout, backfill_id)[2:4] == ["5 day", "2 completed, 1 failed, 2 not started"]

    # 2. resume without a fix, --keep-going: only the three unfinished days run; the broken one fails again
    second = cli(project, "backfill", "--resume", backfill_id, "--keep-going")
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]
    assert "2 of 5 intervals already completed" in second.stdout
    assert runs_by_name(backfill_id) == {
        "daily-2024-01-01": ["COMPLETED"], "daily-2024-01-02": ["COMPLETED"], "daily-2024-01-03": ["FAILED", "FAILED"],
        "daily-2024-01-04": ["COMPLETED"], "daily-2024-01-05": ["COMPLETED"],
    }

    # 3. fix the model (dbt code may change between attempts) and resume: exactly one interval runs
    before = len(invocations(project))
    model.write_text(CHECK_MODEL.format(broken="never"))
    third = cli(project, "backfill", "--resume", backfill_id)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "4 of 5 intervals already completed" in third.stdout and "5 completed" in third.stdout
    resumed = [r for r in invocations(project)[before:] if r["command"] in ("run", "build")]
    assert len(resumed) == 1  # one dbt invocation: the single unfinished day
    assert runs_by_name(backfill_id)["daily-2024-01-03"] == ["FAILED", "FAILED", "COMPLETED"]
    assert all(len(states) == 1 for name, states in runs_by_name(backfill_id).items() if name != "daily-2024-01-03")

    # every process parsed the dbt project at most twice: CHECK_MODEL compares execution_date with
    # the broken day at parse time, so dbt's parse differs on that day (mage_dbt.dbt.parse_vars traces it)
    # and the manifest cache keeps one parse per outcome, never one per date
    assert max(parses_per_process(invocations(project)).values(), default=0) <= 2
    assert sum(parses_per_process(invocations(project)).values()) < 2 * len(DAYS)
    revenue_days = duckdb_rows(project, "select cast(revenue_date as varchar) from main.fct_daily_revenue order by 1")
    assert [r[0] for r in revenue_days] == DAYS
    ltv = duckdb_rows(project, "select count(*) from main.customer_ltv_daily")[0][0]
    assert ltv == demo_data.expected_ltv_rows(DAYS)

    # 4. nothing left: a resume does nothing
    done = cli(project, "backfill", "--resume", backfill_id)
    assert done.returncode == 0 and "all 5 intervals completed, nothing to run" in done.stdout, done.stderr[-2000:]

    # 5. the pipeline definition changed: refused, saying what changed; --force goes ahead
    pipeline_file.write_text(pipeline_file.read_text().replace("- daily_check", "- daily_check\n  - fct_orders"))
    changed = cli(project, "backfill", "--resume", backfill_id)
    assert changed.returncode == 2, changed.stdout[-2000:] + changed.stderr[-2000:]
    assert "Traceback" not in changed.stderr
    assert re.search(r"error: pipeline 'daily' changed since backfill .*flows/daily.yaml changed \(sha256 \w+ -> \w+\); "
                     r"blocks added: fct_orders — resume anyway with --force", changed.stderr), changed.stderr
    assert len(flow_runs(backfill_id)) == 7  # nothing started (3 + 3 + 1 interval runs so far)
    forced = cli(project, "backfill", "--resume", backfill_id, "--force")
    assert forced.returncode == 0 and "nothing to run" in forced.stdout, forced.stderr[-2000:]


def test_backfill_flow_runs_from_its_parameters_alone(demo_project):
    """What a Prefect deployment run does: call the parameterized flow, no CLI and no recorded plan."""
    from mage_dbt.backfill.flow import backfill_flow

    schema = backfill_flow.parameters.model_dump()  # the deployment form: typed, nothing required
    assert {"pipeline", "start", "end", "interval", "concurrency", "select", "full_refresh_first", "target",
            "backfill_id"} <= set(schema["properties"])
    assert not schema.get("required")
    assert schema["properties"]["concurrency"]["anyOf"][0]["type"] == "integer"

    write_pipeline(demo_project, "revenue", ["+fct_daily_revenue", "+stg_customers"], command="build",
                   exclude=["test_type:singular"])
    code = ("from mage_dbt.backfill.flow import backfill_flow\n"
            "state = backfill_flow(pipeline='revenue', start='2024-01-01', end='2024-01-02', return_state=True)\n"
            "print('STATE', state.type.value, flush=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "MAGE_DBT_DATA_DIR"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=demo_project, env=env, capture_output=True, text=True,
                          timeout=600)
    assert "STATE COMPLETED" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    [backfill_id] = backfill_ids(demo_project)
    assert runs_by_name(backfill_id) == {"revenue-2024-01-01": ["COMPLETED"], "revenue-2024-01-02": ["COMPLETED"]}
    [parent] = flow_runs(backfill_id, "mage-dbt-backfill")  # tagged once the flow made its plan
    assert parent.name == "backfill-revenue-2024-01-01-2024-01-02"
