"""Helpers for the deployment, worker and UI tests: test pipelines, Prefect polling, background processes.

Test pipelines get unique names so tests sharing the session's Prefect server never see each
other's deployments. Waiting is polling the Prefect API for a state, with a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import yaml

FLOW_NAME = "mage-dbt-pipeline"
POLL = 0.5  # seconds between API polls while waiting for a state (polling, not synchronization)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


# The demo's dbt nodes, without the ones reading the source a Python block of the demo loads.
DBT_ONLY = {"select": ["*"], "exclude": ["source:landing+"]}


def write_pipeline(project: Path, name: str, *, dbt: dict | None = None, **extra: Any) -> Path:
    """`flows/<name>.yaml` over the demo dbt project (default: `DBT_ONLY`) plus `extra` top-level keys."""
    data = {
        "description": f"test pipeline {name} over the demo shop",
        "dbt": {"project": "demo", **(dbt or DBT_ONLY), "command": "build"},
        **extra,
    }
    path = project / "flows" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def deployment(name: str):
    """The deployment `mage-dbt-pipeline/<name>`, or None."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
        except ObjectNotFound:
            return None


def flow_runs_of(deployment_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            limit=200, offset=0, sort="EXPECTED_START_TIME_ASC",
        )


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL)


def wait_for_final_state(flow_run_id, timeout: float = 400, process: "Background | None" = None):
    """The flow run once its state is final (Completed, Failed, Crashed, Cancelled)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        def final():
            if process is not None:
                process.assert_alive()
            run = client.read_flow_run(flow_run_id)
            return run if run.state and run.state.is_final() else None

        return wait_until(final, timeout, f"flow run {flow_run_id} to finish")


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI/worker subprocess: the test's Prefect server, no leaked project paths."""
    env = {**os.environ, "COLUMNS": "200", **extra}
    for key in ("MAGE_DBT_DATA_DIR", "MAGE_DBT_PROJECT_DIR"):
        if key not in extra:
            env.pop(key, None)
    return env


class Background:
    """A long-running subprocess (worker, `mage-dbt serve`, a server) in its own process group."""

    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file = open(log, "w")
        self.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def assert_alive(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.process.args[:3]} exited with {self.process.returncode}:\n{self.output()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self._log_file.close()


def duckdb_rows_when_released(project: Path, sql: str, timeout: float = 120) -> list[tuple]:
    """`sql` on the project's DuckDB file once the flow-run process that wrote it has let go of it.

    A run's state turns final a moment before its process exits and releases DuckDB's file lock.
    """
    import duckdb

    from tests.support.runs import duckdb_rows

    def attempt():
        try:
            return (duckdb_rows(project, sql),)
        except duckdb.IOException as exc:
            if "lock" not in str(exc):
                raise
            return None

    return wait_until(attempt, timeout, f"the DuckDB file of {project} to be released")[0]
