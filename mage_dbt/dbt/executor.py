"""How dbt runs a group of nodes: the executor protocol and the in-process implementation.

The runner decides *what* to run (an exact node list, a context); an executor decides *how*. The
in-process executor runs the list as ONE dbt invocation against the cached, parsed manifest, with
the exact nodes selected by FQN (folder prefixes where that is exact, see node_selection) and
`--indirect-selection empty` (no extra tests sneak in). The
node list goes to dbt as a Python list, never through a shell command line, so huge selections
cannot overflow ARG_MAX. Other executors (a subprocess worker, dbt Cloud) plug in here.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Protocol, Sequence

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
        window = window_args(loaded.nodes, unique_ids, command, context.event_time)
        args = [
            command,
            *ref.base_args(),
            *node_args(loaded, unique_ids),
            "--vars", json.dumps(context.dbt_vars(), default=str),
            "--log-level", "none",
            "--no-use-colors",
            # dbt would re-serialise the whole manifest to JSON on every run (seconds at a few
            # thousand models); the manifest cache keeps this revision's manifest.json (manifest.py).
            # run_results.json is still written, below, where dbt would put it (`dbt retry` reads it).
            "--no-write-json",
            # Microbatch models: the run's interval is dbt's event-time window (mage_dbt.dbt.microbatch).
            *window,
        ]
        if full_refresh:
            args.append("--full-refresh")
        wanted = set(unique_ids)
        microbatch = microbatch_ids(loaded.nodes, unique_ids)
        events = NodeEvents(listener, wanted=wanted, microbatch=microbatch)
        retry_batches = {u: w for u, w in context.retry_batches.items() if u in microbatch}
        with dbt_lock(), only_failed_batches(loaded.dbt_manifest, retry_batches):
            raw = invoke_dbt(
                args,
                manifest=loaded.dbt_manifest,
                callbacks=[events],
                invocation_log=ref.invocation_log,
                node_count=len(unique_ids),
                note={"event_time": window[1::2], "retry_batches": sum(map(len, retry_batches.values()))}
                if window else None,
            )
        if hasattr(raw.result, "write"):
            raw.result.write(str(ref.target_path / "run_results.json"))
        from_run = {k: v for k, v in results_from_run(raw).items() if k in wanted}
        for unique_id, error in events.batch_errors.items():  # "PARTIAL SUCCESS (1/5)" alone says not why
            if unique_id in from_run:
                from_run[unique_id] = replace(from_run[unique_id], message=f"{from_run[unique_id].message}: {error}")
        results = {**events.finished, **from_run}
        for unique_id in sorted(microbatch & set(from_run)):  # their events did not finish them (NodeEvents)
            listener.node_finished(from_run[unique_id])
        problem = error_text(raw)
        for unique_id in wanted - set(results):
            if raw.success and loaded.nodes[unique_id].materialized == "ephemeral":
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
        return InvocationOutcome(success=bool(raw.success), results=results, error=problem, raw=raw)
