"""The work-pool path: `mage-dbt deploy --work-pool` to a process pool, a separate `prefect worker start`
process (started elsewhere) runs API-triggered runs in the project folder with per-block task runs;
a scheduled run without an execution date processes its scheduled date, however late it starts;
wrong parameter types are refused before the warehouse is touched."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from tests.conftest import BIN, cli, copy_project
from tests.support.deployments import (
    Background, child_env, deployment, duckdb_rows_when_released, flow_runs_of, unique, wait_for_final_state,
    write_pipeline,
)
from tests.support.runs import task_runs


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A fresh process work pool with a `prefect worker` running in an unrelated folder."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    root = tmp_path_factory.mktemp("worker")
    name = unique("process_pool")
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))
    worker = Background(
        [str(BIN / "prefect"), "worker", "start", "--pool", name, "--type", "process"],
        cwd=root, env=child_env(PREFECT_WORKER_QUERY_SECONDS="1"), log=root / "worker.log",
    )
    try:
        yield name, worker
    finally:
        worker.stop()


def _deploy_to(project, pool_name: str) -> str:
    name = unique("wshop")
    write_pipeline(project, name, description="worker test pipeline")
    result = cli(project, "deploy", name, "--work-pool", pool_name)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return name


@pytest.fixture(scope="module")
def pool_project(pool, tmp_path_factory):
    """A demo project deployed to the pool: (project folder, pipeline name, worker)."""
    project = copy_project(tmp_path_factory.mktemp("pool_project") / "project")
    return project, _deploy_to(project, pool[0]), pool[1]


def _run(name: str, **kwargs):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.create_flow_run_from_deployment(deployment(name).id, **kwargs)


def test_worker_process_runs_a_deployment_run_with_parameters(pool_project):
    project, name, worker = pool_project
    dep = deployment(name)
    assert dep.job_variables == {"working_dir": str(project), "env": {"MAGE_DBT_PROJECT_DIR": str(project)}}
    created = _run(name, parameters={"execution_date": "2024-02-01T00:00:00+00:00"})
    run = wait_for_final_state(created.id, process=worker)
    assert run.state.type.value == "COMPLETED", (run.state.message, worker.output()[-3000:])
    assert run.work_pool_name == dep.work_pool_name

    runs = task_runs(str(run.id))
    summary = json.loads((project / ".mage_dbt" / "runs" / str(run.id) / "summary.json").read_text())
    assert summary["execution_date"] == "2024-02-01"
    assert set(runs) == set(summary["results"]) and {"raw_orders", "stg_orders", "fct_orders"} <= set(runs)
    assert {r.state.type.value for r in runs.values()} == {"COMPLETED"}
    dates = duckdb_rows_when_released(project, "select distinct loaded_for_date from main.fct_orders")
    assert [str(d[0]) for d in dates] == ["2024-02-01"]


def test_scheduled_run_processes_its_scheduled_date_not_the_wall_clock(pool_project):
    """A run scheduled for 2024-02-03 05:00 UTC that starts years late still processes 2024-02-03."""
    from prefect.states import Scheduled

    project, name, worker = pool_project
    when = datetime(2024, 2, 3, 5, 0, tzinfo=timezone.utc)
    created = _run(name, state=Scheduled(scheduled_time=when))
    assert "execution_date" not in created.parameters
    run = wait_for_final_state(created.id, process=worker)
    assert run.state.type.value == "COMPLETED", (run.state.message, worker.output()[-3000:])
    assert run.expected_start_time == when and run.start_time.year > 2024
    summary = json.loads((project / ".mage_dbt" / "runs" / str(run.id) / "summary.json").read_text())
    assert summary["execution_date"] == "2024-02-03"
    assert run.name.startswith(f"{name}-2024-02-03")


def test_wrong_parameter_types_are_refused_before_the_warehouse_is_touched(pool, demo_project):
    from prefect.exceptions import PrefectHTTPStatusError

    name = _deploy_to(demo_project, pool[0])
    data_dir = demo_project / ".mage_dbt"

    # The server checks the deployment's parameter schema: no run is even created.
    with pytest.raises(PrefectHTTPStatusError) as refused:
        _run(name, parameters={"full_refresh": "maybe"})
    assert "full_refresh" in str(refused.value) and "boolean" in str(refused.value)
    assert flow_runs_of(deployment(name).id) == []

    # A string that is no date passes the JSON schema, so the flow itself refuses it before it starts.
    created = _run(name, parameters={"execution_date": "not-a-date"})
    run = wait_for_final_state(created.id, process=pool[1])
    assert run.state.type.value == "FAILED"
    assert "execution_date" in run.state.message and "valid datetime" in run.state.message, run.state.message
    assert task_runs(str(run.id)) == {}
    # Nothing was written: no DuckDB file (a valid run creates it, see the first test), no run folder.
    assert not (data_dir / "demo.duckdb").exists() and not (data_dir / "runs").exists()
