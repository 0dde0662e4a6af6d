"""What a run checks about its microbatch models before any block runs.

A run whose event-time window starts before a microbatch model's `begin` is refused (dbt would
build batches for days the model says have no data; usually a wrong date). A microbatch model
whose upstream has no `event_time` gets a warning naming that upstream: dbt cannot filter it to
the batch, so every batch reads it whole (slow, and for a non-additive model, wrong).
"""

from __future__ import annotations

from typing import Any

from mage_dbt.dbt.microbatch import Window, before_begin, upstreams_without_event_time
from mage_dbt.errors import SelectionError


def check_event_time_window(resolved: Any, window: Window | None) -> None:
    """Refuse a run's event-time `window` (a RunContext's `event_time`) that starts before a
    selected microbatch model's `begin`."""
    if resolved.manifest is None or window is None:
        return
    problems = before_begin(resolved.manifest.nodes, resolved.blocks_by_id, window)
    if problems:
        first = problems[0]
        start = window[0].isoformat()
        raise SelectionError(
            f"microbatch model '{first.model}' begins {first.begin}, but this run's event-time window "
            f"starts {start}" + (f" (and {len(problems) - 1} more model(s))" if len(problems) > 1 else ""),
            hint=f"run dates from {first.begin[:10]} on, or lower the model's `begin` config",
        )


def warn_unfiltered_upstreams(resolved: Any, logger: Any) -> None:
    """Log a warning per (microbatch model, upstream without event_time)."""
    if resolved.manifest is None:
        return
    for model, upstream in upstreams_without_event_time(resolved.manifest.nodes, resolved.blocks_by_id):
        logger.warning("microbatch model %s reads %s, which has no event_time: every batch reads all of it "
                       "(set `event_time:` in %s's config)", model, upstream, upstream)
