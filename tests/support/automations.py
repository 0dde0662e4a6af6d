"""Prefect automations on a real server, read through its REST API (no client state involved)."""

from __future__ import annotations

import json
import urllib.request

NAME = "mage-dbt: crash runs whose process is gone"


def automations_named(api_url: str, name: str = NAME) -> list[dict]:
    request = urllib.request.Request(f"{api_url}/automations/filter", data=b"{}",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return [a for a in json.load(response) if a["name"] == name]


def assert_zombie_automation(automation: dict, within: int) -> None:
    """Prefect's "detect zombie flows" automation, for mage-dbt's flows, `within` seconds."""
    trigger = automation["trigger"]
    assert automation["enabled"] is True
    assert trigger["type"] == "event" and trigger["posture"] == "Proactive" and trigger["threshold"] == 1
    assert trigger["after"] == ["prefect.flow-run.heartbeat"]
    assert sorted(trigger["expect"]) == sorted(["prefect.flow-run.heartbeat", "prefect.flow-run.Completed",
                                                "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                                                "prefect.flow-run.Crashed"])
    assert trigger["for_each"] == ["prefect.resource.id"]
    assert trigger["match"] == {"prefect.resource.id": ["prefect.flow-run.*"]}
    assert trigger["match_related"] == {"prefect.resource.role": "flow", "prefect.resource.name": "mage-dbt-*"}
    assert trigger["within"] == within
    assert [(a["type"], a["state"]) for a in automation["actions"]] == [("change-flow-run-state", "CRASHED")]
    assert automation["actions"][0]["message"] == (
        f"no heartbeat for {within} s: its process is gone (killed, lost power or cut off from the server) — "
        "re-run what did not finish with `mage-dbt retry`")
