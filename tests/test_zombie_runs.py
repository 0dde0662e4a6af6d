"""Issue 22: a run whose process is gone is marked Crashed by Prefect's own missing-heartbeat detection
where a server runs — the automation mage-dbt creates (idempotently, by name) at `mage-dbt deploy`
(here, on the test session's real server) and when the shared local server starts
(tests/test_local_server.py)."""

from __future__ import annotations

import json
import os
import signal
import urllib.request

from tests.conftest import cli
from tests.support.automations import NAME, assert_zombie_automation, automations_named

LINE = f"automation {NAME!r} {{action}}: a run without a heartbeat for {{within}} s is marked Crashed"


def test_deploy_creates_the_heartbeat_automation_once_and_follows_the_frequency(demo_project, tmp_path):
    """On a private server: the automation is one per server, and on the session's shared server
    another test's `deploy` (another xdist worker) can set it between two of this test's deploys
    (CI saw 'unchanged' where this test expected 'updated')."""
    from tests.support import prefect_server

    server = prefect_server.start(tmp_path / "prefect_home")
    try:
        api = server.env["PREFECT_API_URL"]
        slow = cli(demo_project, "deploy", "demo", env={**server.env, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "600"})
        assert slow.returncode == 0, slow.stdout + slow.stderr
        assert LINE.format(action="created", within=1800) in " ".join(slow.stdout.split()), slow.stdout
        [automation] = automations_named(api)
        assert_zombie_automation(automation, within=1800)

        default = cli(demo_project, "deploy", "demo", env=server.env)  # Prefect's default: a heartbeat every 180 s
        assert default.returncode == 0, default.stdout + default.stderr
        assert LINE.format(action="updated", within=540) in " ".join(default.stdout.split()), default.stdout
        [updated] = automations_named(api)
        assert updated["id"] == automation["id"]
        assert_zombie_automation(updated, within=540)

        again = cli(demo_project, "deploy", "demo", env=server.env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "automation" not in again.stdout  # unchanged: nothing to say
        assert [a["id"] for a in automations_named(api)] == [automation["id"]]
    finally:
        server.stop()


def test_no_automation_is_made_without_heartbeats():
    from mage_dbt.deploy.zombie_runs import ensure_zombie_automation

    assert ensure_zombie_automation(frequency=0) is None  # returns before talking to any server


def test_a_sigkilled_run_is_marked_crashed_by_the_server_without_any_mage_dbt_command(demo_project, tmp_path):
    """The whole path on a private real server (its automation's window is short, which the session's
    runs must not meet): a real run sends its first heartbeat, is SIGKILLed mid-block, and the server's
    own trigger and action services set it Crashed — no `mage-dbt retry`, no command at all.

    Prefect's heartbeats are at least 30 s apart, so the automation is made for 20-second heartbeats
    (a 60 s window): a live run's next heartbeat may come a whole 30 s late before it is taken for dead
    (a 15 s window once set a live CI run Crashed before its gate started; 36 s left a margin of 6 s),
    and the window is still short enough for a quick test."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from mage_dbt.deploy.zombie_runs import ensure_zombie_automation
    from tests.support import prefect_server
    from tests.test_backfill_support import wait_for
    from tests.test_interrupted_runs import _gated_pipeline, _run_dirs, _signal_group, _start, _wait_for_gate

    server = prefect_server.start(tmp_path / "prefect_home")
    try:
        api = f"{server.url}/api"
        with temporary_settings(updates={PREFECT_API_URL: api}):
            assert ensure_zombie_automation(frequency=20) == "created"
        assert_zombie_automation(automations_named(api)[0], within=60)
        env = {**server.env, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
        gates = _gated_pipeline(demo_project)
        gates.mkdir()
        (gates / "release-2024-02-02").write_text("")  # this run finishes: the automation must leave it
        finished = cli(demo_project, "run", "gated", "-d", "2024-02-02", env=env)
        assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
        [finished_id] = _run_dirs(demo_project)
        proc = _start(demo_project, "run", "gated", "-d", "2024-02-01", env=env, log=tmp_path / "killed.log")
        try:
            _wait_for_gate(proc, gates, "2024-02-01")
            [run_id] = _run_dirs(demo_project) - {finished_id}
        finally:
            _signal_group(proc, signal.SIGKILL)
        assert proc.returncode == -signal.SIGKILL

        def state(flow_run_id: str) -> dict:
            with urllib.request.urlopen(f"{api}/flow_runs/{flow_run_id}", timeout=30) as response:
                return json.load(response)["state"]

        crashed = wait_for(lambda: (s := state(run_id))["type"] == "CRASHED" and s,
                           "the server to mark the run Crashed", timeout=240)
        assert crashed["message"] == ("no heartbeat for 60 s: its process is gone (killed, lost power or cut off "
                                      "from the server) — re-run what did not finish with `mage-dbt retry`")
        # The finished run's last heartbeat is older than the killed run's: its window passed first.
        assert state(finished_id)["type"] == "COMPLETED"
    finally:
        server.stop()
