"""Run a resolved pipeline: units in DAG order, failures skip their downstream, results summarised.

A dbt group runs as one invocation through a `DbtExecutor`; Python, SQL and dbt command blocks run
through the runner registered for their kind (`mage_dbt.blocks.runners`). A block whose upstream
failed or was skipped is reported as skipped (never silently missing); independent branches still
run. Every block gets a Prefect task run through the `TaskRunReporter` when one is given.

Run policies (`mage_dbt.pipelines.run_policies`): a failed block with retries left is tried again in
this run; for a dbt group, dbt is invoked again for exactly the failed nodes and the nodes they held
up, never one that succeeded. A timeout stops the block or the dbt invocation through
`mage_dbt.runs.interrupts.time_limits` (as Ctrl-C does); its running blocks end TimedOut.

Ephemeral models are the exception: dbt compiles them into the models that ref them and never runs
them, so they get no task run and no row in the summary (`RunSummary.ephemeral` lists them) unless
compiling one fails, which fails that block like any other. Task-run upstreams look through them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from mage_dbt.blocks.block import through_ephemeral
from mage_dbt.blocks.outputs import OutputStore
from mage_dbt.blocks.runners import BlockEnv, run_block
from mage_dbt.context import RunContext
from mage_dbt.dbt.executor import DbtExecutor
from mage_dbt.dbt.executor_choice import executor_for_pipeline
from mage_dbt.dbt.invocation import count_invocations
from mage_dbt.dbt.manifest import prune_target_folders
from mage_dbt.pipelines.pipeline import Pipeline, Unit
from mage_dbt.refresh.full_refresh import invocation_phases, set_aside_snapshots, settle_snapshots, snapshot_ids
from mage_dbt.runs.block_results import CANCELLED, FAILED, SKIPPED, SUCCESS, BlockResult, RunSummary
from mage_dbt.runs.dbt_listener import DbtNodeListener
from mage_dbt.runs.reuse import RunReuse
from mage_dbt.runs.interrupts import CANCELLED_MESSAGE, TimeLimitExceeded, TimeLimits, interrupted, time_limits
from mage_dbt.runs.task_runs import TaskRunReporter
from mage_dbt.settings import ProjectSettings

LOG = logging.getLogger("mage_dbt.runner")

__all__ = ["PipelineRunner", "RunSummary", "BlockResult", "SUCCESS", "FAILED", "SKIPPED", "CANCELLED"]


class PipelineRunner:
    """Executes one pipeline run for one context."""

    def __init__(
        self,
        settings: ProjectSettings,
        pipeline: Pipeline,
        context: RunContext,
        *,
        reporter: TaskRunReporter | None = None,
        executor: DbtExecutor | None = None,
        full_refresh_nodes: set[str] | None = None,
        outputs: OutputStore | None = None,
        reuse: bool = False,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.context = context
        self.reporter = reporter
        self.executor = executor or executor_for_pipeline(settings.dbt_executor, pipeline)  # mage_dbt.yaml's
        self.summary = RunSummary(pipeline=pipeline.name, execution_date=context.date_vars()["execution_date"])
        # Node ids rebuilt with --full-refresh (targeted full refresh); None: context.full_refresh for all.
        self.full_refresh_nodes = full_refresh_nodes
        # Block outputs live on disk per run (mage_dbt.blocks.outputs); a retry passes a store whose
        # fallback_run_ids name the run it retries.
        self.outputs = outputs if outputs is not None else OutputStore(
            settings.data_dir, pipeline.name, context.run_id)
        # State keys: reuse unchanged dbt nodes (when `reuse`), and record every build (mage_dbt.runs.reuse).
        self._wrote: dict[str, tuple[str, ...]] = {}  # tables a block wrote (SQL blocks' `materialize:`)
        self.reuse = RunReuse(settings, pipeline, context, enabled=reuse, full_refresh_nodes=full_refresh_nodes) \
            if pipeline.manifest is not None else None

    def run(self) -> RunSummary:
        self.outputs.begin(execution_date=self.summary.execution_date,
                           retention_days=self.settings.file.output_retention_days)
        prune_target_folders(self.settings.data_dir)
        with count_invocations() as invocations:  # every dbt call: groups and dbt command blocks
            for unit in self.pipeline.units:
                if interrupted():
                    break
                try:
                    self._run_unit(unit)
                except KeyboardInterrupt:
                    if not interrupted():
                        raise
                finally:
                    self.summary.dbt_invocations = invocations.count
        if interrupted():
            self._cancel_unfinished()
        if self.reuse:
            self.reuse.finish(self.summary)
        return self.summary

    def _run_unit(self, unit: Unit) -> None:
        blocked = self._blocked(unit)
        for name in sorted(blocked):
            self._skip(name, blocked[name])
        todo = [b for b in unit.blocks if b not in blocked]
        if todo and unit.kind == "dbt_group":
            self._run_dbt(unit, todo)
        elif todo:
            self._run_block(todo[0])

    def _cancel_unfinished(self) -> None:
        """After Ctrl-C: every block without a result (running or not reached) is Cancelled; a task run
        left open (its block's result recorded just as Ctrl-C came, a microbatch batch) ends as the summary says."""
        self.summary.interrupted = True
        for name in self._topo():
            block = self.pipeline.blocks[name]
            if name in self.summary.results or block.is_ephemeral:
                continue
            self.summary.results[name] = BlockResult(name=name, kind=block.kind, status=CANCELLED,
                                                     message=CANCELLED_MESSAGE, unique_id=block.unique_id)
            if self.reporter:
                self.reporter.skipped(name, kind=block.kind, reason=CANCELLED_MESSAGE, state_name="Cancelled")
        for name in self.reporter.unfinished() if self.reporter else ():
            self._end_task_run(name)

    def _end_task_run(self, name: str) -> None:
        """A task run Ctrl-C left open (its block's result recorded, or a batch's): ended as the summary says."""
        assert self.reporter is not None
        result = self.summary.results.get(name)
        if result is not None and result.status in (SUCCESS, FAILED):
            self.reporter.finished(name, ok=result.status == SUCCESS, message=result.message,
                                   name="TimedOut" if result.timed_out else None)
        else:
            self.reporter.skipped(name, kind="block", reason=result.message if result else CANCELLED_MESSAGE,
                                  state_name="Skipped" if result and result.status == SKIPPED else "Cancelled")

    def _blocked(self, unit: Unit) -> dict[str, str]:
        """Blocks of `unit` that cannot run, with the upstream block that stops them."""
        bad = {n for n, r in self.summary.results.items() if r.status != SUCCESS}
        bad |= {n for n, status in self.summary.ephemeral.items() if status != SUCCESS}
        blocked: dict[str, str] = {}
        order = [n for n in self._topo() if n in unit.blocks]
        for name in order:
            for up in self.pipeline.blocks[name].upstream:
                if up in bad or up in blocked:
                    if self.pipeline.blocks[up].is_ephemeral:  # not in the summary: name what is
                        up = blocked.get(up) or self._shown_cause(up)
                    blocked[name] = up
                    break
        return blocked

    def _shown_cause(self, name: str) -> str:
        """The nearest block in the summary that did not succeed, upstream of (or equal to) `name`."""
        todo, seen = [name], set()
        while todo:
            current = todo.pop(0)
            result = self.summary.results.get(current)
            if result is not None and result.status != SUCCESS:
                return current
            if current not in seen and self.pipeline.blocks[current].is_ephemeral:
                seen.add(current)
                todo.extend(self.pipeline.blocks[current].upstream)
        return name

    def _topo(self) -> list[str]:
        if not hasattr(self, "_order"):
            import networkx as nx

            self._order = list(nx.topological_sort(self.pipeline.graph))
        return self._order

    def _skip(self, name: str, because: str) -> None:
        block = self.pipeline.blocks[name]
        if block.is_ephemeral:
            self.summary.ephemeral[name] = SKIPPED
            return
        reason = f"upstream block '{because}' did not succeed"
        self.summary.results[name] = BlockResult(name=name, kind=block.kind, status=SKIPPED, message=reason,
                                                 unique_id=block.unique_id)
        if self.reporter:
            self.reporter.skipped(name, kind=block.kind, reason=reason)

    def _run_dbt(self, unit: Unit, todo: list[str]) -> None:
        assert self.pipeline.manifest is not None
        ids = [self.pipeline.blocks[n].unique_id for n in todo]
        if self.reuse:  # nodes whose state key is unchanged are Reused, not run
            ids = self.reuse.split(ids, self.summary, self.reporter)
        try:
            self._run_dbt_ids(ids)
        finally:
            if self.reuse:
                self.reuse.record(ids, self.summary)

    def _run_dbt_ids(self, ids: list[str]) -> None:
        if not ids:
            return
        listener = DbtNodeListener(self.pipeline, self.summary, self.reporter)
        if self.full_refresh_nodes is None:
            phases = [(ids, self.context.full_refresh)]
        else:  # a targeted full refresh: --full-refresh only for the targeted nodes (mage_dbt.refresh.full_refresh)
            phases = invocation_phases(self.pipeline.manifest, ids, self.full_refresh_nodes)
        for phase_ids, refresh in phases:
            if interrupted():
                return
            phase_ids = self._not_blocked(phase_ids)
            if phase_ids:
                self._invoke_dbt(phase_ids, refresh, listener)

    def _not_blocked(self, ids: list[str]) -> list[str]:
        """Skip the nodes of a later phase whose upstream failed in an earlier one."""
        names = {self.pipeline.blocks[n].unique_id: n for n in self.pipeline.blocks}
        blocked = self._blocked(Unit(id="phase", kind="dbt_group", blocks=tuple(names[u] for u in ids)))
        for name in sorted(blocked):
            self._skip(name, blocked[name])
        return [u for u in ids if names[u] not in blocked]

    def _invoke_dbt(self, ids: list[str], full_refresh: bool, listener: DbtNodeListener) -> None:
        """dbt for `ids`, then again for the nodes to retry and those waiting on them (run policies)."""
        assert self.pipeline.manifest is not None
        snapshots = snapshot_ids(self.pipeline.manifest, ids) if full_refresh and self.full_refresh_nodes else []
        moved = set_aside_snapshots(self.pipeline.manifest, snapshots) if snapshots else {}
        succeeded: set[str] = set()
        context = self.context
        try:
            pending, by_id = list(ids), self.pipeline.blocks_by_id
            while pending and not interrupted():
                timed = any(self.pipeline.policy(by_id[u]).timeout_seconds for u in pending)
                with time_limits(timed) as limits:
                    listener.next_invocation(limits)
                    try:
                        outcome = self.executor.run_nodes(
                            self.pipeline.manifest, pending, context=context, listener=listener,
                            command="build", full_refresh=full_refresh,
                        )
                        succeeded |= {u for u, r in outcome.results.items() if r.ok}
                        context = _only_failed_batches_again(context, outcome.results, listener.retry)
                    except TimeLimitExceeded:  # passed outside dbt's own handling: end what has no result
                        listener.stopped(pending)
                pending = self._next_round(ids, listener)
                delay = listener.retry_delay() if pending else 0.0
                if delay > 0:
                    LOG.info("retrying %d dbt node(s) in %.1fs", len(listener.retry), delay)
                    time.sleep(delay)  # the retry delay of the run policy; Ctrl-C interrupts it
        finally:
            settle_snapshots(self.pipeline.manifest, moved, succeeded)

    def _next_round(self, ids: list[str], listener: DbtNodeListener) -> list[str]:
        """The nodes of the next invocation: those to retry, and those that waited on them unless an
        upstream failed for good (those are skipped now). Never a node that succeeded."""
        by_id = self.pipeline.blocks_by_id
        waiting = [u for u in ids if u in listener.deferred]
        blocked = self._blocked(Unit(id="retry", kind="dbt_group", blocks=tuple(by_id[u] for u in waiting)))
        for name in sorted(blocked):
            self._skip(name, blocked[name])
        return [u for u in ids if u in listener.retry or (u in listener.deferred and by_id[u] not in blocked)]

    def _run_block(self, name: str) -> None:
        """A Python, SQL or dbt command block, tried as often as its run policy allows."""
        block = self.pipeline.blocks[name]
        policy = self.pipeline.policy(name)
        env = BlockEnv(settings=self.settings, pipeline=self.pipeline, context=self.context,
                       outputs=self.outputs, reporter=self.reporter)
        upstream = through_ephemeral(self.pipeline.blocks, block.upstream)
        for attempt in range(1, policy.tries + 1):
            if self.reporter:
                self.reporter.started(name, kind=block.kind, upstream=upstream, retries=policy.retries,
                                      retrying=attempt > 1)
            started = time.perf_counter()
            status, message, rows, timed_out = self._try_block(block, env, policy.timeout_seconds)
            seconds = round(time.perf_counter() - started, 3)
            if status == SUCCESS or attempt == policy.tries or interrupted():
                break
            delay = policy.delay(attempt)
            note = f"try {attempt} of {policy.tries} failed: {message}"
            if self.reporter:
                self.reporter.log(name, f"{note}; next try in {delay:.1f}s", logging.WARNING)
                self.reporter.awaiting_retry(name, delay=delay, message=note)
            if delay > 0:
                time.sleep(delay)  # the retry delay of the run policy; Ctrl-C interrupts it
        self.summary.results[name] = BlockResult(name=name, kind=block.kind, status=status, message=message,
                                                 seconds=seconds, rows=rows, tries=attempt, timed_out=timed_out)
        if self.reuse:
            self.reuse.block_ran(block, status == SUCCESS, self._wrote.pop(name, ()))
        if self.reporter:
            if message:
                self.reporter.log(name, message, logging.INFO if status == SUCCESS else logging.ERROR)
            self.reporter.finished(name, ok=status == SUCCESS, message=message,
                                   name="TimedOut" if timed_out else None)

    def _try_block(self, block, env: BlockEnv, timeout: float | None) -> tuple[str, str | None, int | None, bool]:
        """One try of a block: (status, message, rows, timed out)."""
        with time_limits(timeout is not None) as limits:
            try:
                status, message, rows = self._call_block(block, env, limits, timeout)
            except TimeLimitExceeded:
                status, message, rows = FAILED, None, None
        if status != SUCCESS and limits.expired:
            return FAILED, f"timed out: ran longer than its timeout_seconds ({timeout:g}s)", None, True
        return status, message, rows, False

    def _call_block(self, block, env: BlockEnv, limits: TimeLimits, timeout: float | None):
        limits.arm(block.name, timeout)
        try:
            outcome = run_block(block, env)
            self._wrote[block.name] = outcome.writes
            self.outputs[block.name] = outcome.output
            return SUCCESS, outcome.message, outcome.rows
        except Exception as exc:  # a block's failure is a result, not a crash of the run
            LOG.debug("block %s failed", block.name, exc_info=True)
            return FAILED, " ".join(str(exc).split()) or type(exc).__name__, None
        finally:
            limits.disarm(block.name)


def _only_failed_batches_again(context: RunContext, results, retry) -> RunContext:
    """The context of a retry round: a microbatch model retried after some of its batches failed
    runs only those batches again (as `mage-dbt retry` does), not its whole window."""
    failed = {u: r.batches_failed for u, r in results.items() if u in retry and r.batches_failed}
    return replace(context, retry_batches={**context.retry_batches, **failed}) if failed else context
