"""dbt node events of one dbt group as block results and Prefect task runs, with run policies.

`DbtNodeListener` receives dbt's NodeStart/NodeFinished (from dbt's worker threads) and records each
node's result in the run summary and its task run; under a run policy it holds back the nodes to
retry and those they held up, so the runner can invoke dbt again for exactly them.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

from mage_dbt.blocks.block import through_ephemeral
from mage_dbt.dbt.invocation import NodeResult
from mage_dbt.dbt.microbatch import window_label
from mage_dbt.pipelines.pipeline import Pipeline
from mage_dbt.runs.block_results import CANCELLED, FAILED, SKIPPED, SUCCESS, BlockResult, RunSummary
from mage_dbt.runs.interrupts import CANCELLED_MESSAGE, TimeLimits, interrupted
from mage_dbt.runs.task_runs import TaskRunReporter


class DbtNodeListener:
    """Maps dbt node events onto block results and Prefect task runs.

    Run policies: a node that fails (or times out) with tries left is reported AwaitingRetry and
    put in `retry`; a node dbt did not run because of it (skipped, or not started when a timeout
    cancelled the invocation) is put in `deferred`, without a state yet. The runner then invokes
    dbt again for exactly those nodes (`PipelineRunner._next_round` in mage_dbt.runs.runner)."""

    def __init__(self, pipeline: Pipeline, summary: RunSummary, reporter: TaskRunReporter | None) -> None:
        self._pipeline = pipeline
        self._summary = summary
        self._reporter = reporter
        self._names = {b.unique_id: b.name for b in pipeline.blocks.values() if b.unique_id}
        self._started: set[str] = set()
        self.tries: dict[str, int] = {}
        self.retry: set[str] = set()
        self.deferred: set[str] = set()
        self.limits: TimeLimits | None = None
        self._running: set[str] = set()
        self._lock = threading.RLock()  # node events come from dbt's threads (re-entrant: a finish may start)

    def next_invocation(self, limits: TimeLimits) -> None:
        self.retry, self.deferred, self.limits, self._running = set(), set(), limits, set()

    def node_started(self, unique_id: str, *, by_dbt: bool = True) -> None:
        with self._lock:  # dbt calls from several threads at once; the sets below are shared
            self._node_started(unique_id, by_dbt=by_dbt)

    def _node_started(self, unique_id: str, *, by_dbt: bool) -> None:
        block = self._pipeline.blocks[self._names[unique_id]]
        if block.is_ephemeral:
            return  # dbt only compiles it: a task run exists only if that fails
        if by_dbt and self._upstream_pending(block.name):
            return  # dbt starts it only to skip it: it runs in the next invocation
        self._started.add(unique_id)
        policy = self._pipeline.policy(block.name)
        if by_dbt:
            self._running.add(unique_id)
            self.tries[unique_id] = self.tries.get(unique_id, 0) + 1
            if self.limits is not None:
                self.limits.arm(unique_id, policy.timeout_seconds)
        if self._reporter:
            self._reporter.started(block.name, kind=block.kind, retries=policy.retries,
                                   retrying=self.tries.get(unique_id, 0) > 1,
                                   upstream=through_ephemeral(self._pipeline.blocks, block.upstream))

    def node_finished(self, result: NodeResult) -> None:
        with self._lock:
            self._node_finished(result)

    def _node_finished(self, result: NodeResult) -> None:
        block = self._pipeline.blocks[self._names[result.unique_id]]
        uid = result.unique_id
        if self.limits is not None:
            self.limits.disarm(uid)
        was_running = uid in self._running
        self._running.discard(uid)
        status = SUCCESS if result.ok else SKIPPED if result.skipped else FAILED
        timed_out = False
        if status != SUCCESS and interrupted():  # stopped by Ctrl-C, not failed
            status, result = CANCELLED, replace(result, message=CANCELLED_MESSAGE)
        elif status != SUCCESS and self.limits is not None and self.limits.expired:
            if status == SKIPPED or not was_running:  # not run: decided after the invocation
                self.deferred.add(uid)
                return
            status, timed_out = FAILED, True
            result = replace(result, message=self._timeout_message(uid))
        elif status == SKIPPED and self._upstream_pending(block.name):
            self.deferred.add(uid)
            return
        if status == FAILED and not was_running:  # failed without dbt starting it: a try all the same
            self.tries[uid] = self.tries.get(uid, 0) + 1
        if status == FAILED and not block.is_ephemeral and self.tries[uid] < self._pipeline.policy(block.name).tries:
            self._await_retry(block, uid, result)
            return
        if block.is_ephemeral and status not in (FAILED, CANCELLED):
            self._summary.ephemeral[block.name] = status
            return
        message = result.message
        if status == SKIPPED:
            message = result.message or "skipped by dbt: an upstream node failed"
        batches = len(result.batches_ok) + len(result.batches_failed)
        if result.batches_failed:
            message = (f"{len(result.batches_failed)} of {batches} batches failed: "
                       f"{', '.join(window_label(w) for w in result.batches_failed[:10])} ({result.message})")
        failures, stored = self._test_failures(block, result)
        if stored and message:
            message = f"{message}; failing rows stored in {stored}"
        self._summary.results[block.name] = BlockResult(
            name=block.name, kind=block.kind, status=status, message=message,
            seconds=round(result.execution_time, 3), rows=result.rows_affected,
            dbt_status=result.status, unique_id=result.unique_id, tries=max(self.tries.get(uid, 1), 1),
            timed_out=timed_out, failed_batches=[list(w) for w in result.batches_failed] or None,
            batches=batches or None, failures=failures, failures_relation=stored,
        )
        if self._reporter:
            if result.unique_id not in self._started:  # dbt never started it: its task run still has to exist
                self.node_started(result.unique_id, by_dbt=False)
            self._report(block, status, result, message, timed_out)

    def _test_failures(self, block, result: NodeResult) -> tuple[int | None, str | None]:
        """A dbt test's failing-row count, and with store_failures the relation holding those rows."""
        if block.kind != "dbt_test" or result.failures is None:
            return None, None
        manifest = self._pipeline.manifest
        node = manifest.nodes.get(result.unique_id) if manifest is not None else None
        stored = node.relation_name if node is not None and node.store_failures and result.failures else None
        return result.failures, stored

    def batch_started(self, unique_id: str, label: str) -> None:
        if self._reporter:
            self._reporter.batch_started(self._names[unique_id], label)

    def batch_finished(self, unique_id: str, label: str, *, ok: bool, skipped: bool, seconds: float) -> None:
        if self._reporter:
            self._reporter.batch_finished(self._names[unique_id], label, ok=ok, skipped=skipped, seconds=seconds)

    def stopped(self, ids: list[str]) -> None:
        """The invocation was stopped before dbt reported these nodes."""
        with self._lock:
            self._stopped(ids)

    def _stopped(self, ids: list[str]) -> None:
        for uid in ids:
            name = self._names[uid]
            if not ({uid} & (self.retry | self.deferred) or name in self._summary.results
                    or name in self._summary.ephemeral):
                self.node_finished(NodeResult(unique_id=uid, status="error", message="dbt was stopped"))

    def _timeout_message(self, uid: str) -> str:
        assert self.limits is not None
        if uid in self.limits.expired:
            return (f"timed out: ran longer than its timeout_seconds ({self.limits.expired[uid]:g}s); "
                    "dbt cancelled its queries")
        culprits = ", ".join(sorted(self._names.get(u, u) for u in self.limits.expired))
        return f"timed out: the dbt group was cancelled when {culprits} passed its timeout_seconds"

    def _upstream_pending(self, name: str) -> bool:
        """Whether a node upstream of `name` will run again (retried, or itself waiting)."""
        import networkx as nx

        waiting = {self._names[u] for u in self.retry | self.deferred | self._retriable_microbatch()}
        return bool(waiting & nx.ancestors(self._pipeline.graph, name))

    def _retriable_microbatch(self) -> set[str]:
        """Microbatch models still running with tries left: dbt reports such a model only after the
        invocation (NodeEvents), but skips its downstream as soon as a batch fails; if the model is
        retried, that downstream must wait for it rather than end skipped."""
        microbatch = self._pipeline.microbatch_blocks
        return {u for u in self._running if self._names[u] in microbatch
                and self.tries.get(u, 0) < self._pipeline.policy(self._names[u]).tries}

    def _await_retry(self, block, uid: str, result: NodeResult) -> None:
        policy = self._pipeline.policy(block.name)
        self.retry.add(uid)
        if self._reporter:
            tries = self.tries.get(uid, 1)
            message = f"try {tries} of {policy.tries} failed: {result.message or result.status}"
            self._reporter.log(block.name, message, logging.WARNING)
            self._reporter.awaiting_retry(block.name, delay=policy.delay(tries), message=message)

    def retry_delay(self) -> float:
        """Seconds to wait before the next invocation: the longest delay among the nodes to retry."""
        return max((self._pipeline.policy(self._names[u]).delay(self.tries.get(u, 1)) for u in self.retry),
                   default=0.0)

    def _report(self, block, status, result: NodeResult, message, timed_out: bool = False) -> None:
        assert self._reporter is not None
        detail = f"dbt {result.status} in {result.execution_time:.2f}s"
        if result.rows_affected is not None:
            detail += f", {result.rows_affected} rows"
        if message:
            detail += f": {message}"
        self._reporter.log(block.name, detail, logging.INFO if status == SUCCESS else logging.ERROR)
        if status in (SKIPPED, CANCELLED):
            self._reporter.finished(block.name, ok=False, message=message,
                                    name="Skipped" if status == SKIPPED else "Cancelled", skipped=True)
        else:
            self._reporter.finished(block.name, ok=status == SUCCESS, message=message,
                                    name="TimedOut" if timed_out else "Warn" if result.status == "warn" else None)
