"""Issue 22: a run whose process is gone is marked Crashed by Prefect's own missing-heartbeat detection
where a server runs — the automation mage-dbt creates (idempotently, by name) at `mage-dbt deploy`
(here, on the test session's real server) and when the shared local server starts
(tests/test_local_server.py)."""

from __future__ import annotations

import os

from tests.conftest import cli
from tests.support.automations import NAME, assert_zombie_automation, automations_named

LINE = f"automation {NAME!r} {{action}}: a run without a heartbeat for {{within}} s is marked Crashed"


def test_deploy_creates_the_heartbeat_automation_once_and_follows_the_frequency(demo_project):
    api = os.environ["PREFECT_API_URL"]
    # 600 s heartbeats: a 30-minute window, longer than the default's, so the test session's other
    # runs (default heartbeats, every 180 s) are never judged by a window shorter than theirs.
    slow = cli(demo_project, "deploy", "demo", env={"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "600"})
    assert slow.returncode == 0, slow.stdout + slow.stderr
    said = " ".join(slow.stdout.split())
    assert (LINE.format(action="created", within=1800) in said or LINE.format(action="updated", within=1800) in said
            ), slow.stdout
    [automation] = automations_named(api)
    assert_zombie_automation(automation, within=1800)

    default = cli(demo_project, "deploy", "demo")  # Prefect's default: a heartbeat every 180 s
    assert default.returncode == 0, default.stdout + default.stderr
    assert LINE.format(action="updated", within=540) in " ".join(default.stdout.split()), default.stdout
    [updated] = automations_named(api)
    assert updated["id"] == automation["id"]
    assert_zombie_automation(updated, within=540)

    again = cli(demo_project, "deploy", "demo")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "automation" not in again.stdout  # unchanged: nothing to say
    assert [a["id"] for a in automations_named(api)] == [automation["id"]]


def test_no_automation_is_made_without_heartbeats():
    from mage_dbt.deploy.zombie_runs import ensure_zombie_automation

    assert ensure_zombie_automation(frequency=0) is None  # returns before talking to any server
