"""Triggers beyond schedules (issue 16, item 4) on a real Prefect server with a process worker:
`trigger: {after: [A]}` starts B by itself when a run of A completes, with A's execution date; the
API trigger works from Python (`run_deployment`) and as a plain HTTP call (`curl`), and the server
refuses parameters of the wrong type; a trigger cycle and an unknown upstream are refused at deploy
with file:line, before anything is registered."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.conftest import BIN, cli, copy_project
from tests.support.block_pipelines import one_line_error, write_pipeline
from tests.support.deployments import (
    FLOW_NAME, Background, child_env, deployment, flow_runs_of, unique, wait_for_final_state, wait_until,
)

STAMP = """
    from mage_dbt import data_loader


    @data_loader
    def stamp(*, execution_date):
        return {"date": execution_date.isoformat()}
    """


def _pipeline(project, name: str, **extra) -> None:
    spec = {"description": "stamps its execution date",
            "blocks": [{"name": "stamp", "type": "python", "file": "flows/stamp/stamp.py"}], **extra}
    write_pipeline(project, name, spec, {"flows/stamp/stamp.py": STAMP})


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """Pipelines A and B (trigger after A) deployed to a fresh process pool with a running worker."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    root = tmp_path_factory.mktemp("triggers")
    project = copy_project(root / "project")
    pool = unique("trigger_pool")
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    a, b = unique("upstream"), unique("downstream")
    _pipeline(project, a)
    _pipeline(project, b, trigger={"after": [a], "on": "completed"})
    result = cli(project, "deploy", a, b, "--work-pool", pool)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    worker = Background([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
                        cwd=root, env=child_env(PREFECT_WORKER_QUERY_SECONDS="1"), log=root / "worker.log")
    try:
        yield project, a, b, worker
    finally:
        worker.stop()


def _summary_date(project, run) -> str:
    return json.loads((project / ".mage_dbt" / "runs" / str(run.id) / "summary.json").read_text())["execution_date"]


def _completed(run_id, worker):
    run = wait_for_final_state(run_id, timeout=300, process=worker)
    assert run.state.type.value == "COMPLETED", (run.state.message, worker.output()[-3000:])
    return run


def test_b_starts_by_itself_after_a_completes_with_a_s_execution_date(deployed):
    from prefect.deployments import run_deployment

    project, a, b, worker = deployed
    downstream = deployment(b)
    before = {r.id for r in flow_runs_of(downstream.id)}
    # The API trigger from Python: a run of A for 2024-05-06 (timeout=0: do not wait here).
    started = run_deployment(f"{FLOW_NAME}/{a}", parameters={"execution_date": "2024-05-06T00:00:00+00:00"},
                             timeout=0)
    upstream_run = _completed(started.id, worker)
    assert _summary_date(project, upstream_run) == "2024-05-06"

    def b_run():
        return [r for r in flow_runs_of(downstream.id) if r.id not in before]

    triggered = wait_until(b_run, 300, f"a run of {b} started by the completion of {a}")
    assert len(triggered) == 1
    run = _completed(triggered[0].id, worker)
    assert str(run.parameters["execution_date"]).startswith("2024-05-06T00:00:00")
    assert _summary_date(project, run) == "2024-05-06"
    assert run.start_time >= upstream_run.end_time


def test_api_trigger_with_curl_and_the_server_checks_parameter_types(deployed):
    project, a, _, worker = deployed
    api = child_env()["PREFECT_API_URL"]
    url = f"{api}/deployments/{deployment(a).id}/create_flow_run"

    def curl(parameters: dict) -> tuple[int, str]:
        # A busy SQLite server answers 503 now and then (Prefect's own client retries it too). curl's --retry
        # appends each attempt's body to stdout ('{"exception_message":"Service Unavailable"}{"id": ...'),
        # so the retry is here and every attempt's answer stands alone.
        for attempt in range(6):
            done = subprocess.run(
                ["curl", "-sS", "-X", "POST", "-H", "Content-Type: application/json", "-o", "-", "-w", "\n%{http_code}",
                 "--data", json.dumps({"parameters": parameters}), url],
                capture_output=True, text=True, timeout=60)
            body, _, code = done.stdout.rpartition("\n")
            if int(code) != 503:
                break
            time.sleep(1 + attempt)  # back-off before a retry, as curl's --retry-delay did
        return int(code), body

    code, body = curl({"execution_date": "2024-05-07T00:00:00+00:00"})
    assert code == 201, body
    run = _completed(json.loads(body)["id"], worker)
    assert _summary_date(project, run) == "2024-05-07"

    before = len(flow_runs_of(deployment(a).id))
    for bad, field in (({"execution_date": 20240507}, "execution_date"), ({"full_refresh": "maybe"}, "full_refresh")):
        code, body = curl(bad)
        assert 400 <= code < 500 and field in body, (code, body)
    assert len(flow_runs_of(deployment(a).id)) == before  # refused: no run was created


@pytest.mark.parametrize("case", ["cycle", "unknown"])
def test_trigger_cycle_and_unknown_upstream_are_refused_at_deploy(demo_project, case):
    a, b = unique("loop_a"), unique("loop_b")
    _pipeline(demo_project, a, trigger={"after": [b if case == "cycle" else "no_such_pipeline"]})
    _pipeline(demo_project, b, trigger={"after": [a]})
    line = one_line_error(cli(demo_project, "deploy", a, b))
    lines = (demo_project / "flows" / f"{a}.yaml").read_text().splitlines()
    at = next(i for i, text in enumerate(lines, 1) if text.strip().startswith("- ") and "loop_" in text
              or "no_such_pipeline" in text)
    if case == "cycle":
        assert f"flows/{a}.yaml:{at}: trigger cycle: {a} after {b} after {a}" in line, line
    else:
        assert f"flows/{a}.yaml:{at}: trigger after unknown pipeline 'no_such_pipeline'" in line, line
    assert deployment(a) is None and deployment(b) is None


def test_prefect_yaml_carries_the_trigger_and_prefect_deploy_installs_it(demo_project, tmp_path):
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from tests.support.automations import automations_named

    a, b, pool = unique("yaml_up"), unique("yaml_down"), unique("pool")
    _pipeline(demo_project, a)
    _pipeline(demo_project, b, trigger={"after": [a]})
    target = tmp_path / "prefect.yaml"
    result = cli(demo_project, "deploy", a, b, "--work-pool", pool, "--prefect-yaml", str(target))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    entries = {d["name"]: d for d in yaml.safe_load(target.read_text())["deployments"]}
    assert "triggers" not in entries[a] and len(entries[b]["triggers"]) == 1
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    done = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", str(target)],
                          cwd=demo_project, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    [automation] = automations_named(child_env()["PREFECT_API_URL"], f"mage-dbt: run {b} after {a} completed")
    [action] = automation["actions"]
    assert action["type"] == "run-deployment" and action["deployment_id"] == str(deployment(b).id)
    assert action["parameters"]["execution_date"]["template"].startswith("{{ flow_run.parameters.get('execution_date')")
    assert automation["trigger"]["expect"] == ["prefect.flow-run.Completed"]
