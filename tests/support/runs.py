"""Helpers to read what a run did: the CLI's flow run id, Prefect task runs, warehouse tables."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

FLOW_RUN_LINE = re.compile(r"flow run: ([0-9a-f-]{36})")


def flow_run_id(stdout: str) -> str:
    match = FLOW_RUN_LINE.search(stdout)
    assert match, f"no flow run id in output:\n{stdout[-2000:]}"
    return match.group(1)


def task_runs(flow_run: str, *, batches: bool = False) -> dict[str, object]:
    """Task runs of a flow run by name, read through the Prefect API: one per block, plus (with
    `batches`) one per batch of a microbatch model."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run])), limit=200,
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
    return {run.name: run for run in runs
            if batches or not run.task_key.startswith("mage-dbt.microbatch-batch.")}


def flow_run(flow_run: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run)


def duckdb_rows(project: Path, sql: str) -> list[tuple]:
    import duckdb

    with duckdb.connect(str(project / ".mage_dbt" / "demo.duckdb"), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def checksum(rows: list[tuple]) -> str:
    """Order-independent checksum of a table's rows."""
    return hashlib.sha256("\n".join(sorted(repr(r) for r in rows)).encode()).hexdigest()
