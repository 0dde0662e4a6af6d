"""How dbt runs a group of nodes: the executor protocol and the in-process implementation.

The runner decides *what* to run (an exact node list, a context); an executor decides *how*. The
in-process executor runs the list as ONE dbt invocation against the cached, parsed manifest, with
the exact nodes selected by FQN (folder prefixes where that is exact, see node_selection) and
`--indirect-selection empty` (no extra tests sneak in). The
node list goes to dbt as a Python list, never through a shell command line, so huge selections
cannot overflow ARG_MAX. Other executors plug in here: `json_log_executor` (the dbt CLI as a
subprocess, read through its JSON log) and `worker_executor` (this in-process executor, run in a
long-lived worker process); `executor_choice` picks one from the project's `dbt_executor` setting.
Every executor builds its dbt arguments with `plan_invocation` and settles the nodes dbt did not
report with `settle_results`, so they run the same nodes and report the same results.

Where the in-process executor is still the better choice: tests and library use (no extra
process to start), backfill worker processes (each is already a process of its own), and small
groups where a worker's start-up is not hidden behind anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Protocol, Sequence

from mage_dbt.context import RunContext
from mage_dbt.dbt.invocation import (
    InvocationOutcome, NodeEvents, NodeListener, NodeResult, dbt_lock, error_text, invoke_dbt, results_from_run,
)
from mage_dbt.dbt.manifest import LoadedManifest
from mage_dbt.dbt.microbatch import microbatch_ids, only_failed_batches, window_args
from mage_dbt.dbt.selection import compact_selectors


class DbtExecutor(Protocol):
    def run_nodes(
        self,
        loaded: LoadedManifest,
        unique_ids: Sequence[str],
        *,
        context: RunContext,
        listener: NodeListener,
        command: str = "build",
        full_refresh: bool = False,
    ) -> InvocationOutcome: ...


def node_args(loaded: LoadedManifest, unique_ids: Sequence[str]) -> list[str]:
    """Selection flags that make dbt run exactly `unique_ids` (folder prefixes where exact)."""
    selectors = compact_selectors(loaded.dbt_manifest, unique_ids) or [loaded.nodes[u].selector for u in unique_ids]
    return ["--select", *selectors, "--indirect-selection", "empty"]


@dataclass(frozen=True)
class InvocationPlan:
    """One dbt invocation of a node group, as every executor runs it."""

    args: list[str]  # the command and its flags, without the output flags of an executor
    wanted: frozenset[str]
    microbatch: frozenset[str]
    window: list[str]  # the event-time flags (empty without microbatch models)
    retry_batches: Mapping[str, Any] = field(default_factory=dict)

    def note(self) -> dict[str, Any] | None:
        """Extra fields of the invocation log record."""
        if not self.window:
            return None
        return {"event_time": self.window[1::2], "retry_batches": sum(map(len, self.retry_batches.values()))}


def plan_invocation(loaded: LoadedManifest, unique_ids: Sequence[str], *, context: RunContext,
                    command: str = "build", full_refresh: bool = False,
                    target_path: Any = None) -> InvocationPlan:
    """The one arg builder: dbt's command, the project's flags, the exact selection, the run's vars,
    the event-time window (microbatch models) and --full-refresh."""
    window = window_args(loaded.nodes, unique_ids, command, context.event_time)
    args = [
        command,
        *loaded.ref.base_args(target_path),
        *node_args(loaded, unique_ids),
        "--vars", json.dumps(context.dbt_vars(), default=str),
        "--no-use-colors",
        # Microbatch models: the run's interval is dbt's event-time window (mage_dbt.dbt.microbatch).
        *window,
        # A slim run: parents not built here resolve to the state manifest's relations (mage_dbt.dbt.slim).
        *(["--defer", "--state", context.defer_state] if context.defer_state else []),
    ]
    if full_refresh:
        args.append("--full-refresh")
    microbatch = microbatch_ids(loaded.nodes, unique_ids)
    retry_batches = {u: w for u, w in context.retry_batches.items() if u in microbatch}
    return InvocationPlan(args=args, wanted=frozenset(unique_ids), microbatch=frozenset(microbatch),
                          window=window, retry_batches=retry_batches)


def settle_results(loaded: LoadedManifest, plan: InvocationPlan, listener: NodeListener, events: NodeEvents,
                   from_run: dict[str, NodeResult], *, success: bool, problem: str | None) -> dict[str, NodeResult]:
    """The invocation's node results: dbt's run results over its events; microbatch models finished
    from their run results; every node dbt did not report finished as an error (ephemeral models
    compiled into others: success when the invocation succeeded)."""
    if events.failure is not None:  # our own handling of an event failed (kept, not raised into dbt)
        raise RuntimeError(f"mage_dbt failed while following dbt's events: {events.failure!r}") from events.failure
    from_run = {k: v for k, v in from_run.items() if k in plan.wanted}
    for unique_id, error in events.batch_errors.items():  # "PARTIAL SUCCESS (1/5)" alone says not why
        if unique_id in from_run:
            from_run[unique_id] = replace(from_run[unique_id], message=f"{from_run[unique_id].message}: {error}")
    results = {**events.finished, **from_run}
    for unique_id in sorted(plan.microbatch & set(from_run)):  # their events did not finish them (NodeEvents)
        listener.node_finished(from_run[unique_id])
    for unique_id in sorted(plan.wanted - set(results)):
        if success and loaded.nodes[unique_id].materialized == "ephemeral":
            # dbt compiles an ephemeral model into the models that ref it and reports no result
            # for it; compiling it failed if and only if the invocation failed.
            results[unique_id] = NodeResult(unique_id=unique_id, status="success")
            listener.node_finished(results[unique_id])
            continue
        results[unique_id] = NodeResult(
            unique_id=unique_id,
            status="error",
            message=problem or "dbt did not run this node (see the dbt log under the data folder)",
        )
        listener.node_finished(results[unique_id])
    return results


class InProcessDbtExecutor:
    """Runs a node group as one in-process dbt invocation reusing the parsed manifest."""

    def run_nodes(
        self,
        loaded: LoadedManifest,
        unique_ids: Sequence[str],
        *,
        context: RunContext,
        listener: NodeListener,
        command: str = "build",
        full_refresh: bool = False,
    ) -> InvocationOutcome:
        ref = loaded.ref
        plan = plan_invocation(loaded, unique_ids, context=context, command=command, full_refresh=full_refresh)
        args = [
            *plan.args,
            "--log-level", "none",
            # dbt would re-serialise the whole manifest to JSON on every run (seconds at a few
            # thousand models); the manifest cache keeps this revision's manifest.json (manifest.py).
            # run_results.json is still written, below, where dbt would put it (`dbt retry` reads it).
            "--no-write-json",
        ]
        events = NodeEvents(listener, wanted=set(plan.wanted), microbatch=set(plan.microbatch))
        with dbt_lock(), only_failed_batches(loaded.dbt_manifest, plan.retry_batches):
            raw = invoke_dbt(
                args,
                manifest=loaded.dbt_manifest,
                callbacks=[events],
                invocation_log=ref.invocation_log,
                node_count=len(unique_ids),
                note=plan.note(),
            )
        if hasattr(raw.result, "write"):
            raw.result.write(str(ref.target_path / "run_results.json"))
        problem = error_text(raw)
        results = settle_results(loaded, plan, listener, events, results_from_run(raw),
                                 success=bool(raw.success), problem=problem)
        return InvocationOutcome(success=bool(raw.success), results=results, error=problem, raw=raw)
