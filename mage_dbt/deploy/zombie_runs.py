"""Prefect's own missing-heartbeat detection: a server automation that marks a run Crashed when its
process stops sending heartbeats.

A flow run mage_dbt runs sends a `prefect.flow-run.heartbeat` event every
PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (`mage_dbt.runs.heartbeats`, or Prefect's engine for runs
started by `serve` and workers). `ensure_zombie_automation()` creates, on the server this process
talks to, the automation of Prefect's "detect zombie flows" guide: after a heartbeat of a run of a
mage-dbt flow, expect another heartbeat (or the run's end) within 3 heartbeat periods; if none
comes, set the run Crashed. Nothing needs to run on the machine of the dead run, so a run whose
host lost power is marked too (`mage_dbt.runs.run_liveness` covers the same on this host without a
server-side service, at the next `mage-dbt retry`).

Idempotent by name: called at `mage-dbt deploy` and when the shared local server starts, it creates
the automation, updates it when the heartbeat frequency changed, or leaves it. Nothing is created
when heartbeats are off (PREFECT_FLOWS_HEARTBEAT_FREQUENCY empty): without them every run would look dead.
"""

from __future__ import annotations

from typing import Any, Optional

AUTOMATION_NAME = "mage-dbt: crash runs whose process is gone"
MISSED_HEARTBEATS = 3  # heartbeat periods without one before a run counts as dead (Prefect's guide: 90 s at 30 s)
FLOWS = "mage-dbt-*"  # the flows mage_dbt defines (pipeline, backfill, rebuild, full-refresh, sync)
ENDED = ("Completed", "Failed", "Cancelled", "Crashed")


def heartbeat_frequency() -> Optional[int]:
    """Seconds between a run's heartbeats in this process's Prefect settings (None: heartbeats off)."""
    from prefect.settings import get_current_settings

    return get_current_settings().flows.heartbeat_frequency


def zombie_automation(frequency: int) -> Any:
    """The automation (`prefect.events.schemas.automations.AutomationCore`) for runs beating every `frequency` s."""
    from datetime import timedelta

    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    within = MISSED_HEARTBEATS * frequency
    return AutomationCore(
        name=AUTOMATION_NAME,
        description=(f"Created by mage-dbt: a run of a mage-dbt flow that sent no heartbeat for {within} s "
                     f"({MISSED_HEARTBEATS} x PREFECT_FLOWS_HEARTBEAT_FREQUENCY={frequency}) is set Crashed."),
        enabled=True,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{state}" for state in ENDED)},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification({"prefect.resource.role": "flow", "prefect.resource.name": FLOWS}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat for {within} s: its process is gone (killed, lost power or cut off from the "
                    "server) — re-run what did not finish with `mage-dbt retry`")],
    )


def ensure_zombie_automation(frequency: Optional[int] = None) -> Optional[str]:
    """Create or update the automation on the configured Prefect server; what was done ('created',
    'updated', 'unchanged'), or None when heartbeats are off."""
    from prefect.client.orchestration import get_client

    frequency = heartbeat_frequency() if frequency is None else frequency
    if not frequency:
        return None
    wanted = zombie_automation(frequency)
    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(AUTOMATION_NAME)
        if not found:
            client.create_automation(wanted)
            return "created"
        for extra in found[1:]:  # two commands created it at once: keep one
            client.delete_automation(extra.id)
        if _same(found[0], wanted):
            return "unchanged"
        client.update_automation(found[0].id, wanted)
        return "updated"


def _same(existing: Any, wanted: Any) -> bool:
    fields = ("description", "enabled", "trigger", "actions")
    return all(_plain(getattr(existing, f)) == _plain(getattr(wanted, f)) for f in fields)


def _plain(value: Any) -> Any:
    """A comparable form: trigger ids and set orders do not count."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json", exclude={"id"})
    if isinstance(value, dict):
        return {k: sorted(v) if isinstance(v, list) and all(isinstance(i, str) for i in v) else v
                for k, v in value.items() if k != "id"}
    return value


def ensure_and_say(announce) -> None:
    """`ensure_zombie_automation`, with one line for `announce` saying what it did; a server that
    refuses it (an older Prefect, no permission) is said, never an error: runs work without it."""
    frequency = heartbeat_frequency()
    try:
        action = ensure_zombie_automation(frequency)
    except Exception as exc:  # noqa: BLE001 — the deploy or the server start must not fail on it
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        announce(f"note: could not create the Prefect automation {AUTOMATION_NAME!r} ({reason}): runs whose "
                 "process dies are marked Crashed by the next `mage-dbt retry` only")
        return
    if action is None:
        announce("note: flow-run heartbeats are off (PREFECT_FLOWS_HEARTBEAT_FREQUENCY): runs whose process dies "
                 "are marked Crashed by the next `mage-dbt retry` only")
    elif action != "unchanged":
        announce(f"automation {AUTOMATION_NAME!r} {action}: a run without a heartbeat for "
                 f"{MISSED_HEARTBEATS * frequency} s is marked Crashed")
