"""What a run checks about its microbatch models before any block runs.

A run whose event-time window starts before a microbatch model's `begin` is refused (dbt would
build batches for days the model says have no data; usually a wrong date). A microbatch model
whose upstream has no `event_time` gets a warning naming that upstream: dbt cannot filter it to
the batch, so every batch reads it whole (slow, and for a non-additive model, wrong).
"""

from __future__ import annotations

from typing import Any

from mage_dbt.context import RunContext
from mage_dbt.dbt.microbatch import before_begin, upstreams_without_event_time
from mage_dbt.errors import SelectionError


def pipeline_node_ids(resolved: Any) -> list[str]:
    return [b.unique_id for b in resolved.blocks.values() if b.unique_id]


def check_event_time_window(resolved: Any, context: RunContext) -> None:
    """Refuse a window that starts before a selected microbatch model's `begin`."""
    if resolved.manifest is None or context.event_time is None:
        return
    problems = before_begin(resolved.manifest.nodes, pipeline_node_ids(resolved), context.event_time)
    if problems:
        first = problems[0]
        start = context.event_time[0].isoformat()
        raise SelectionError(
            f"microbatch model '{first.model}' begins {first.begin}, but this run's event-time window "
            f"starts {start}" + (f" (and {len(problems) - 1} more model(s))" if len(problems) > 1 else ""),
            hint=f"run dates from {first.begin[:10]} on, or lower the model's `begin` config",
        )


def warn_unfiltered_upstreams(resolved: Any, logger: Any) -> None:
    """Log a warning per (microbatch model, upstream without event_time)."""
    if resolved.manifest is None:
        return
    for model, upstream in upstreams_without_event_time(resolved.manifest.nodes, pipeline_node_ids(resolved)):
        logger.warning("microbatch model %s reads %s, which has no event_time: every batch reads all of it "
                       "(set `event_time:` in %s's config)", model, upstream, upstream)
