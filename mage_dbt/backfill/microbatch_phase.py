"""The microbatch phase of a backfill: the range's microbatch models in ONE dbt invocation.

dbt splits a microbatch model's work into batches of its `batch_size` by itself, so a backfill
D1..D2 runs its microbatch models once, with the whole range as the event-time window, instead of
once per interval: one pipeline flow run (tagged `backfill-phase:microbatch`) whose task runs
include one per batch. The other blocks then run interval by interval, as before, so a block
downstream of a microbatch model runs for an interval only after that interval's batches exist.

The phase also runs the microbatch models' upstream blocks once, which equals running them once
per interval only when they do not depend on the date: seeds, views and tables whose SQL does not
read the run's dates (and their tests). When some upstream is anything else (a Python block, an
incremental model, a snapshot, a model reading `execution_date`), the backfill falls back to
running everything interval by interval, each interval with its own event-time window, and logs
why (`plan_split` returns None).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import networkx as nx


PHASE_TAG = "backfill-phase:microbatch"
ONCE_IS_ENOUGH = frozenset({"view", "table", "ephemeral"})  # model materializations; plus seeds, tests


@dataclass(frozen=True)
class MicrobatchSplit:
    """Which blocks run once over the whole range, and which run per interval afterwards."""

    phase: tuple[str, ...]
    rest: tuple[str, ...]
    fallback: str | None = None  # why there is no phase (the backfill runs interval by interval)


def interval_select(plan: Any) -> list[str] | None:
    """What each interval run selects: the blocks outside the microbatch phase, or the plan's selection."""
    if plan.microbatch_blocks and plan.interval_blocks is not None:
        return list(plan.interval_blocks)
    return list(plan.select) if plan.select else None


def plan_split(pipeline: Any) -> MicrobatchSplit | None:
    """The split of `pipeline`'s blocks for a backfill, or None when it has no microbatch model."""
    nodes = pipeline.manifest.nodes if pipeline.manifest is not None else {}
    models = pipeline.microbatch_blocks
    if not models:
        return None
    upstream = set().union(*(nx.ancestors(pipeline.graph, m) for m in models)) - models
    date_readers = _date_readers(pipeline, upstream)
    for name in sorted(upstream):
        why = _needs_each_interval(pipeline, nodes, name, date_readers)
        if why:
            return MicrobatchSplit(phase=(), rest=tuple(sorted(pipeline.blocks)),
                                   fallback=f"upstream block {name} {why}")
    phase = models | upstream
    for name, block in pipeline.blocks.items():  # tests of the phase's nodes run with them
        if block.kind == "dbt_test" and block.upstream and set(block.upstream) <= phase:
            phase.add(name)
    return MicrobatchSplit(phase=tuple(sorted(phase)), rest=tuple(sorted(set(pipeline.blocks) - phase)))


def check_window(resolved: Any, start: datetime, end: datetime) -> None:
    """A backfill's event-time window must not start before a microbatch model's `begin`."""
    from mage_dbt.runs.microbatch_checks import check_event_time_window

    check_event_time_window(resolved, (start, end))


def _date_readers(pipeline: Any, names: set[str]) -> set[str]:
    from mage_dbt.refresh.date_reads import date_reading_blocks

    return set(date_reading_blocks(pipeline, [n for n in names if pipeline.blocks[n].unique_id]))


def _needs_each_interval(pipeline: Any, nodes: Any, name: str, date_readers: set[str]) -> str | None:
    block = pipeline.blocks[name]
    node = nodes.get(block.unique_id) if block.unique_id else None
    if node is None:
        return f"is a {block.kind} block (it may depend on the date)"
    if name in date_readers:
        return "reads the run's dates"
    if node.resource_type in ("seed", "test"):
        return None
    if node.resource_type == "model" and node.materialized in ONCE_IS_ENOUGH:
        return None
    return f"is a {node.materialized or node.resource_type} {node.resource_type}"
