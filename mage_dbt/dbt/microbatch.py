"""dbt's microbatch models: the event-time window a run gives dbt, and dbt's batches as results.

A microbatch model (`incremental_strategy: microbatch`) is split by dbt into batches of its
`batch_size`. Without `--event-time-start/--event-time-end` dbt picks the batches from the current
time (and `lookback`), so a run for an old execution date would process today's batches. mage_dbt
passes the run's interval as that window (`event_time_args`), on the `run`/`build` invocations
that contain microbatch models only: dbt refuses the flags on other commands.

dbt reports each batch with `LogStartBatch` / `LogBatchResult` events and, in the model's run
result, `batch_results` (successful and failed batch windows). A retry re-runs only the failed
batches the way `dbt retry` does: the model's `previous_batch_results` (`only_failed_batches`).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Mapping, Sequence

from mage_dbt.dbt.nodes import DbtNode

# dbt commands that accept --event-time-start/--event-time-end (dbt 1.9+).
EVENT_TIME_COMMANDS = frozenset({"run", "build"})
EVENT_TIME_FLAGS = ("--event-time-start", "--event-time-end")

Window = tuple[datetime, datetime]
BatchWindow = tuple[str, str]  # ISO timestamps (UTC) of one batch: [start, end)

_BATCH_LABEL = re.compile(r"^batch (\S+) of ")


def utc_naive(moment: datetime) -> datetime:
    """`moment` in UTC without its offset: how dbt reads event times (it assumes UTC)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def event_time_args(window: Window) -> list[str]:
    """dbt's flags for the window [start, end)."""
    start, end = (utc_naive(w).strftime("%Y-%m-%dT%H:%M:%S") for w in window)
    return [EVENT_TIME_FLAGS[0], start, EVENT_TIME_FLAGS[1], end]


def microbatch_ids(nodes: Mapping[str, DbtNode], unique_ids: Iterable[str]) -> set[str]:
    return {u for u in unique_ids if u in nodes and nodes[u].is_microbatch}


def window_args(nodes: Mapping[str, DbtNode], unique_ids: Iterable[str], command: str,
                window: Window | None) -> list[str]:
    """The event-time flags for one invocation: only for run/build, only with microbatch models."""
    if window is None or command not in EVENT_TIME_COMMANDS or not microbatch_ids(nodes, unique_ids):
        return []
    return event_time_args(window)


def batch_label(description: str) -> str | None:
    """The batch start dbt prints ("batch 2024-02-01 of main.model" -> "2024-02-01")."""
    match = _BATCH_LABEL.match(description or "")
    return match.group(1) if match else None


def batch_windows(run_result: Any) -> tuple[tuple[BatchWindow, ...], tuple[BatchWindow, ...]]:
    """(successful, failed) batch windows of a model's run result (empty for other nodes)."""
    results = getattr(run_result, "batch_results", None)
    if results is None:
        return (), ()

    def iso(batches: Sequence[Any]) -> tuple[BatchWindow, ...]:
        return tuple((_iso(start), _iso(end)) for start, end in batches or ())

    return iso(results.successful), iso(results.failed)


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat()


def window_label(window: BatchWindow) -> str:
    """A batch window as people read it: its start's date (and hour when not midnight)."""
    start = datetime.fromisoformat(window[0])
    return start.date().isoformat() if start.time() == datetime.min.time() else start.strftime("%Y-%m-%dT%H")


@contextlib.contextmanager
def only_failed_batches(manifest: Any, failed: Mapping[str, Sequence[BatchWindow]]) -> Iterator[None]:
    """Make dbt run only these batches of these models (what `dbt retry` does for a microbatch
    model: its `previous_batch_results`). Hold `dbt_lock()`: the manifest is shared."""
    from dbt.artifacts.schemas.batch_results import BatchResults

    touched = []
    try:
        for unique_id, windows in failed.items():
            node = getattr(manifest, "nodes", {}).get(unique_id)
            if node is None or not windows:
                continue
            node.previous_batch_results = BatchResults(failed=[
                (datetime.fromisoformat(s).astimezone(timezone.utc), datetime.fromisoformat(e).astimezone(timezone.utc))
                for s, e in windows])
            touched.append(node)
        yield
    finally:
        for node in touched:
            node.previous_batch_results = None


@dataclass(frozen=True)
class WindowProblem:
    model: str
    begin: str


def before_begin(nodes: Mapping[str, DbtNode], unique_ids: Iterable[str], window: Window) -> list[WindowProblem]:
    """Microbatch models whose `begin` is after the window's start (dbt would build batches of
    days the model says it has no data for)."""
    start = utc_naive(window[0])
    problems = []
    for unique_id in sorted(microbatch_ids(nodes, unique_ids)):
        node = nodes[unique_id]
        if not node.begin:
            continue
        try:
            begin = utc_naive(datetime.fromisoformat(node.begin))
        except ValueError:
            continue
        if start < begin:
            problems.append(WindowProblem(model=node.name, begin=node.begin))
    return problems


def upstreams_without_event_time(nodes: Mapping[str, DbtNode], unique_ids: Iterable[str]) -> list[tuple[str, str]]:
    """(microbatch model, upstream) pairs where the upstream has no `event_time`: dbt cannot filter
    it to the batch, so every batch reads it whole."""
    pairs = []
    for unique_id in sorted(microbatch_ids(nodes, unique_ids)):
        for upstream in nodes[unique_id].depends_on:
            node = nodes.get(upstream)
            if node is not None and node.resource_type in ("model", "seed", "snapshot", "source") \
                    and not node.event_time and node.materialized != "ephemeral":
                pairs.append((nodes[unique_id].name, node.name))
    return pairs
