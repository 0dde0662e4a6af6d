"""Flow-run heartbeats that stop the moment a run ends.

Prefect's flow engine sends a `prefect.flow-run.heartbeat` event every
PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds (default 180; automations use them to mark runs whose
process died as crashed). Its thread sleeps in one-second steps and a synchronous flow run waits
for that thread when it ends: up to a second, half a second on average, after the work is done.

Flows that mage_dbt runs in its own process (`mage-dbt run`, `retry`, `full-refresh`, `rebuild`,
backfill intervals) are called under `engine_heartbeats_off()`, which turns Prefect's thread off
and hands its frequency to `flow_run_heartbeats()`, which those flows' bodies run under: the
same events, from a thread that stops at once. Runs started by Prefect itself (workers, `serve`)
keep Prefect's own heartbeats.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from typing import Iterator

LOG = logging.getLogger("mage_dbt.heartbeats")

# The heartbeat frequency the flow body should keep up, set while Prefect's own heartbeats are off.
_HANDED_OVER: contextvars.ContextVar[int | None] = contextvars.ContextVar("mage_dbt_heartbeats", default=None)


@contextlib.contextmanager
def engine_heartbeats_off() -> Iterator[None]:
    """Around an in-process flow call: Prefect's heartbeat thread off, `flow_run_heartbeats` on."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, get_current_settings, temporary_settings

    frequency = get_current_settings().flows.heartbeat_frequency
    token = _HANDED_OVER.set(frequency)
    try:
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield
    finally:
        _HANDED_OVER.reset(token)


@contextlib.contextmanager
def flow_run_heartbeats() -> Iterator[None]:
    """Inside a flow run: send its heartbeats while the body runs, if they were handed over."""
    from prefect.context import FlowRunContext

    frequency = _HANDED_OVER.get()
    ctx = FlowRunContext.get()
    if not frequency or ctx is None or ctx.flow_run is None:
        yield
        return
    resource, related = _heartbeat_template(ctx)
    stop = threading.Event()

    def beat() -> None:
        from prefect.events import emit_event

        while True:
            try:
                emit_event(event="prefect.flow-run.heartbeat", resource=resource, related=related)
            except Exception:  # a missed heartbeat must never break the run
                LOG.debug("could not send a flow-run heartbeat", exc_info=True)
            if stop.wait(frequency):
                return

    thread = threading.Thread(target=contextvars.copy_context().run, args=(beat,),
                              name="mage-dbt-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _heartbeat_template(ctx) -> tuple[dict[str, str], list]:
    """The resource and related resources of Prefect's own heartbeat event for this flow run."""
    from prefect import __version__
    from prefect.events.related import tags_as_related_resources
    from prefect.events.schemas.events import RelatedResource

    run = ctx.flow_run
    resource = {
        "prefect.resource.id": f"prefect.flow-run.{run.id}",
        "prefect.resource.name": run.name or "",
        "prefect.version": __version__,
    }
    related = []
    if run.flow_id:
        related.append(RelatedResource.model_validate({
            "prefect.resource.id": f"prefect.flow.{run.flow_id}", "prefect.resource.role": "flow",
            "prefect.resource.name": ctx.flow.name if ctx.flow else "",
        }))
    if run.deployment_id:
        related.append(RelatedResource.model_validate({
            "prefect.resource.id": f"prefect.deployment.{run.deployment_id}",
            "prefect.resource.role": "deployment",
        }))
    related += tags_as_related_resources(set(run.tags or []))
    return resource, related
