"""Alerts (issue 16, item 3) on a real Prefect server with a process worker: a failed deployment run
of a pipeline with `notify: {on: [failed], webhook_secret: ...}` delivers a message to a webhook
served on 127.0.0.1 by this test, naming the pipeline, the execution date, the failed block with its
first error line and the exact retry command; the webhook URL (held in a Prefect Secret block) is in
neither the pipeline file, the deploy output nor the automation's readable definition. A notify
target that does not exist is refused at deploy with file:line, before anything is registered."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import BIN, cli, copy_project
from tests.support.automations import automations_named
from tests.support.block_pipelines import one_line_error, write_pipeline
from tests.support.deployments import (
    FLOW_NAME, Background, child_env, deployment, unique, wait_for_final_state, wait_until,
)

FAILING = {
    "flows/alerting/boom.py": """
        from mage_dbt import data_loader


        @data_loader
        def boom():
            raise ValueError("bad input row 7")
        """,
    "flows/alerting/after.py": """
        from mage_dbt import transformer


        @transformer
        def after(boom):
            return boom
        """,
}


@pytest.fixture
def webhook():
    """A webhook on 127.0.0.1 recording the JSON bodies posted to it: (url, received bodies)."""
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append({"path": self.path, "json": json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook/{uuid.uuid4().hex}", received
    finally:
        server.shutdown()


def _alerting_pipeline(project, name: str, notify: dict) -> None:
    spec = {"description": "fails on purpose",
            "blocks": [{"name": "boom", "type": "python", "file": "flows/alerting/boom.py"},
                       {"name": "after", "type": "python", "file": "flows/alerting/after.py", "upstream": ["boom"]}],
            "notify": notify}
    write_pipeline(project, name, spec, FAILING)


def test_failed_deployment_run_posts_the_alert_and_the_url_stays_secret(webhook, tmp_path):
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment

    url, received = webhook
    secret_token = url.rsplit("/", 1)[1]
    secret = unique("alert-url").replace("_", "-")
    Secret(value=url).save(secret)
    project = copy_project(tmp_path / "project")
    name = unique("alerting")
    _alerting_pipeline(project, name, {"on": ["failed", "crashed"], "webhook_secret": secret})
    pool = unique("alert_pool")
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deployed = cli(project, "deploy", name, "--work-pool", pool)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    assert secret_token not in deployed.stdout + deployed.stderr
    assert secret_token not in (project / "flows" / f"{name}.yaml").read_text()

    api = child_env()["PREFECT_API_URL"]
    [automation] = automations_named(api, f"mage-dbt: notify {name} #1")
    assert secret_token not in json.dumps(automation)
    assert [a["type"] for a in automation["actions"]] == ["send-notification"]
    assert sorted(automation["trigger"]["expect"]) == ["prefect.flow-run.Crashed", "prefect.flow-run.Failed"]

    worker = Background([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"],
                        cwd=tmp_path, env=child_env(PREFECT_WORKER_QUERY_SECONDS="1"), log=tmp_path / "worker.log")
    try:
        started = run_deployment(f"{FLOW_NAME}/{name}", parameters={"execution_date": "2024-06-01T00:00:00+00:00"},
                                 timeout=0)
        run = wait_for_final_state(started.id, timeout=300, process=worker)
        assert run.state.type.value == "FAILED", (run.state.message, worker.output()[-3000:])
        wait_until(lambda: received, 180, "the alert to reach the webhook")
    finally:
        worker.stop()
    [alert] = received
    assert alert["path"] == f"/hook/{secret_token}"
    text = alert["json"]["text"]
    assert f"pipeline: {name}\n" in text and "execution date: 2024-06-01T00:00:00" in text, text
    assert "outcome: Failed" in text and "1 block(s) failed: boom; 1 skipped" in text, text
    assert "boom: " in text and "bad input row 7" in text, text
    assert f"retry: mage-dbt retry --run {run.id}" in text, text
    assert name in alert["json"]["subject"] and "Failed" in alert["json"]["subject"]

    # The webhook block the alert goes through shows its URL only to a reader asking for secrets.
    with get_client(sync_client=True) as client:
        block = client.read_block_document_by_name(f"mage-dbt-webhook-{secret}", "custom-webhook",
                                                   include_secrets=False)
    assert secret_token not in json.dumps(block.data, default=str)
    assert automation["actions"][0]["block_document_id"] == str(block.id)


def test_a_notify_target_that_does_not_exist_is_refused_at_deploy(demo_project):
    name = unique("alerting")
    _alerting_pipeline(demo_project, name, {"on": "failed", "webhook_secret": "no-such-secret-block"})
    line = one_line_error(cli(demo_project, "deploy", name))
    lines = (demo_project / "flows" / f"{name}.yaml").read_text().splitlines()
    at = next(i for i, text in enumerate(lines, 1) if "no-such-secret-block" in text)
    assert f"flows/{name}.yaml:{at}: notify target: no Prefect secret block named 'no-such-secret-block'" in line
    assert deployment(name) is None
    assert automations_named(child_env()["PREFECT_API_URL"], f"mage-dbt: notify {name} #1") == []


def test_backfill_workers_take_turns_under_limit_one_and_the_finished_backfill_alerts(webhook, demo_project, tmp_path):
    """`mage-dbt backfill -j 2` of a `concurrency: {limit: 1}` pipeline: the second worker's interval waits
    for the first's slot; the end of the backfill reaches the webhook (`notify: {on: [backfill_finished]}`)."""
    import subprocess

    from prefect.blocks.system import Secret

    from tests.test_concurrency_limits import GATED
    from tests.support.runs import task_runs

    def recent():
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.sorting import FlowRunSort

        with get_client(sync_client=True) as client:
            found = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=6)
        return [(r.name, r.parameters.get("execution_date"), r.state.name, r.state.message) for r in found]

    def interval_run(date: str):
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.sorting import FlowRunSort

        with get_client(sync_client=True) as client:
            found = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=100)
        return next((r for r in found if r.parameters.get("pipeline") == name
                     and str(r.parameters.get("execution_date", "")).startswith(date)), None)

    url, received = webhook
    secret = unique("backfill-url").replace("_", "-")
    Secret(value=url).save(secret)
    name = unique("bfill")
    spec = {"description": "gated backfill", "concurrency": {"limit": 1},
            "notify": {"on": ["backfill_finished"], "webhook_secret": secret},
            "blocks": [{"name": "hold", "type": "python", "file": "flows/gated/hold.py"}]}
    write_pipeline(demo_project, name, spec, {"flows/gated/hold.py": GATED})
    deployed = cli(demo_project, "deploy", name)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    gate = tmp_path / "gate"
    gate.mkdir()
    (gate / "release-2024-07-01").touch()  # the first interval runs alone, before the workers start
    backfill = subprocess.Popen(
        [str(BIN / "mage-dbt"), "backfill", name, "--start", "2024-07-01", "--end", "2024-07-03", "-j", "2"],
        cwd=demo_project, env=child_env(GATE_DIR=str(gate)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        first = wait_until(lambda: [d for d in ("2024-07-02", "2024-07-03") if (gate / f"started-{d}").exists()]
                           or backfill.poll() is not None and ["exited"], 180, "one interval's block to start")
        assert first != ["exited"], backfill.communicate()
        assert not received, received
        other = "2024-07-03" if first == ["2024-07-02"] else "2024-07-02"
        wait_until(lambda: "waiting for a concurrency slot" in (
            getattr(getattr(interval_run(other), "state", None), "message", None) or ""),
            90, f"the other interval's worker to wait for the slot {recent()}")
        assert not (gate / f"started-{other}").exists()
    finally:
        (gate / "release").touch()
        out, err = backfill.communicate(timeout=300)
    assert backfill.returncode == 0, out[-3000:] + err[-3000:]
    runs = {d: interval_run(d) for d in ("2024-07-02", "2024-07-03")}
    assert {r.name for r in runs.values()} == {f"{name}-2024-07-02", f"{name}-2024-07-03"}  # what notify matches
    one, two = (task_runs(str(runs[d].id))["hold"] for d in (first[0], other))
    assert one.end_time <= two.start_time

    wait_until(lambda: received, 180, "the backfill-finished alert")
    text = received[0]["json"]["text"]
    assert f"pipeline: {name}\n" in text and "outcome: backfill finished" in text, text
    assert "execution date: 2024-07-01" in text and "ended Completed" in text, text
    assert "next: mage-dbt backfill --resume " in text, text


def test_a_failed_cli_run_alerts_through_a_named_notification_block(webhook, demo_project):
    """`notify: {block: custom-webhook/<name>}`: any run of the pipeline alerts, a `mage-dbt run` too."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from tests.support.runs import flow_run_id

    url, received = webhook
    block = unique("team-hook").replace("_", "-")
    CustomWebhookNotificationBlock(name="team", url=url, json_data={"text": "{{body}}"}).save(block)
    name = unique("alerting")
    _alerting_pipeline(demo_project, name, {"on": ["failed"], "block": f"custom-webhook/{block}"})
    deployed = cli(demo_project, "deploy", name)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    ran = cli(demo_project, "run", name, "--execution-date", "2024-06-02")
    assert ran.returncode == 1, ran.stdout[-3000:] + ran.stderr[-3000:]
    run_id = flow_run_id(ran.stdout)
    wait_until(lambda: received, 180, "the alert of the failed CLI run")
    text = received[0]["json"]["text"]
    assert f"pipeline: {name}\n" in text and "execution date: 2024-06-02" in text, text
    assert "boom: " in text and "bad input row 7" in text and f"mage-dbt retry --run {run_id}" in text, text
