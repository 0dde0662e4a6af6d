"""Changes tests make to their private copy of the demo project (never to the repository's own
dbt_projects/demo), and readers for what dbt and Prefect recorded about a run."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.support import postgres

DEMO = Path("dbt_projects") / "demo"

FAILING_MODEL = """select order_id, cast('x' as integer) as broken_value
from {{ ref('stg_orders') }}
"""
FIXED_MODEL = """select order_id, '{{ var("execution_date") }}' as loaded_for, '{{ var("region", "none") }}' as region
from {{ ref('stg_orders') }}
"""
# dbt's own statuses of the blocks the failing model affects
FAILED = {"fct_broken"}
SKIPPED_BY_DBT = {"broken_downstream", "not_null_broken_downstream_order_id"}
SKIPPED = SKIPPED_BY_DBT | {"after_broken"}  # after_broken: a dbt_command block, skipped by the runner


def write(project: Path, relative: str, text: str) -> Path:
    path = project / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def add_blocks(project: Path, pipeline: str, *blocks: dict) -> None:
    """Append blocks to flows/<pipeline>.yaml of the copy, keeping what the file already has."""
    path = project / "flows" / f"{pipeline}.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["blocks"] = [*(spec.get("blocks") or []), *blocks]
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


def add_failing_model(project: Path) -> None:
    """fct_broken (downstream of stg_orders) fails at run time; broken_downstream and its test depend
    on it, a dbt_command block depends on broken_downstream; a warn-severity test always warns."""
    write(project, f"{DEMO}/models/marts/fct_broken.sql", FAILING_MODEL)
    write(project, f"{DEMO}/models/marts/broken_downstream.sql", "select * from {{ ref('fct_broken') }}\n")
    write(project, f"{DEMO}/models/marts/_broken.yml", yaml.safe_dump({
        "version": 2,
        "models": [{"name": "broken_downstream", "columns": [{"name": "order_id", "data_tests": ["not_null"]}]}],
    }))
    write(project, f"{DEMO}/tests/warn_on_orders.sql",
          "{{ config(severity='warn') }}\nselect * from {{ ref('stg_orders') }} limit 1\n")
    add_blocks(project, "demo", {"name": "after_broken", "type": "dbt_command",
                                 "command": "test --select broken_downstream", "upstream": ["broken_downstream"]})


def fix_failing_model(project: Path) -> None:
    write(project, f"{DEMO}/models/marts/fct_broken.sql", FIXED_MODEL)


def invocations(project: Path) -> list[dict]:
    """The dbt invocation log of the copy: one record per dbt invocation, oldest first."""
    path = project / ".mage_dbt" / "logs" / "dbt_invocations.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def executions(project: Path) -> list[dict]:
    """The invocations that ran nodes or parsed: without the `compile` the drift check runs first."""
    return [r for r in invocations(project) if r["command"] != "compile"]


def run_results(project: Path, pid: int) -> dict[str, str]:
    """unique_id -> status from dbt's own run_results.json written by process `pid`."""
    folders = list((project / ".mage_dbt" / "dbt_target" / "demo").glob(f"*-{pid}"))
    assert len(folders) == 1, folders
    data = json.loads((folders[0] / "run_results.json").read_text())
    return {r["unique_id"]: r["status"] for r in data["results"]}


def task_run_logs(task_run_id) -> list[str]:
    """The log messages of one task run, oldest first, through the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])),
                                limit=200, offset=0)
    return [log.message for log in logs]


def block_output(task_run_id) -> dict:
    """The output a dbt_command block logged to its task run (`output: <json>`)."""
    found = [m for m in task_run_logs(task_run_id) if m.startswith("output: ")]
    assert len(found) == 1, task_run_logs(task_run_id)
    return json.loads(found[0][len("output: "):])


def states(runs: dict) -> dict[str, tuple[str, str]]:
    """block -> (Prefect state type, state name) for task runs read with support.runs.task_runs."""
    return {name: (run.state.type.value, run.state.name) for name, run in runs.items()}


def reset_pg_schemas(env: dict) -> None:
    postgres.drop_schemas(env)
