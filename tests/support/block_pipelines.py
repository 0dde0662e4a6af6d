"""Helpers for tests of Python/SQL blocks: write a pipeline and its block files into a project copy,
read a run's summary, stored outputs, task run states and logs."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import yaml

from tests.support.runs import flow_run_id


def write_pipeline(project: Path, name: str, spec: dict, files: dict[str, str] | None = None) -> Path:
    """flows/<name>.yaml from `spec`, plus block files (paths relative to the project root)."""
    for relative, text in (files or {}).items():
        path = project / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    path = project / "flows" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def summary(project: Path, stdout: str) -> tuple[str, dict]:
    """(flow run id, summary.json) of the run the CLI printed."""
    run_id = flow_run_id(stdout)
    data = json.loads((project / ".mage_dbt" / "runs" / run_id / "summary.json").read_text())
    return run_id, data


def statuses(data: dict) -> dict[str, str]:
    return {name: r["status"] for name, r in data["results"].items()}


def states(runs: dict) -> dict[str, tuple[str, str]]:
    """block -> (Prefect state type, state name) of task runs read with support.runs.task_runs."""
    return {name: (run.state.type.value, run.state.name) for name, run in runs.items()}


def task_run_logs(task_run_id) -> list[str]:
    """The log messages of one task run, through the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])),
                                limit=200, offset=0)
    return [log.message for log in logs]


def one_line_error(result) -> str:
    """The CLI's error line for a user mistake: exit 2, one line, no traceback, nothing ran."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert "flow run:" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def duckdb_query(project: Path, sql: str) -> list[tuple]:
    import duckdb

    with duckdb.connect(str(project / ".mage_dbt" / "demo.duckdb"), read_only=True) as conn:
        return conn.execute(sql).fetchall()
