"""Run a resolved pipeline: units in DAG order, failures skip their downstream, results summarised.

A dbt group runs as one invocation through a `DbtExecutor`; Python, SQL and dbt command blocks run
through the runner registered for their kind (`mage_dbt.blocks.runners`). A block whose upstream
failed or was skipped is reported as skipped (never silently missing); independent branches still
run. Every block gets a Prefect task run through the `TaskRunReporter` when one is given.

Ephemeral models are the exception: dbt compiles them into the models that ref them and never runs
them, so they get no task run and no row in the summary (`RunSummary.ephemeral` lists them) unless
compiling one fails, which fails that block like any other. Task-run upstreams look through them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from mage_dbt.blocks.block import through_ephemeral
from mage_dbt.blocks.outputs import OutputStore
from mage_dbt.blocks.runners import BlockEnv, run_block
from mage_dbt.context import RunContext
from mage_dbt.dbt.executor import DbtExecutor, InProcessDbtExecutor
from mage_dbt.dbt.invocation import NodeResult, count_invocations
from mage_dbt.dbt.manifest import prune_target_folders
from mage_dbt.dbt.microbatch import window_label
from mage_dbt.pipelines.pipeline import Pipeline, Unit
from mage_dbt.refresh.full_refresh import invocation_phases, set_aside_snapshots, settle_snapshots, snapshot_ids
from mage_dbt.runs.interrupts import CANCELLED_MESSAGE, interrupted
from mage_dbt.runs.task_runs import TaskRunReporter
from mage_dbt.settings import ProjectSettings

LOG = logging.getLogger("mage_dbt.runner")

SUCCESS, FAILED, SKIPPED, CANCELLED = "success", "failed", "skipped", "cancelled"


@dataclass
class BlockResult:
    name: str
    kind: str
    status: str
    message: str | None = None
    seconds: float = 0.0
    rows: int | None = None
    dbt_status: str | None = None
    unique_id: str | None = None
    # Microbatch models: dbt's batches that failed ([start, end) ISO pairs; a retry runs only these).
    failed_batches: list[list[str]] | None = None
    batches: int | None = None


@dataclass
class RunSummary:
    pipeline: str
    execution_date: str
    results: dict[str, BlockResult] = field(default_factory=dict)
    dbt_invocations: int = 0
    # Ephemeral models dbt compiled (success) or did not reach (skipped): not blocks that ran.
    ephemeral: dict[str, str] = field(default_factory=dict)
    # Ctrl-C stopped the run: blocks that did not finish are CANCELLED (mage_dbt.runs.interrupts).
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return all(r.status == SUCCESS for r in self.results.values())

    def names(self, status: str) -> list[str]:
        return sorted(n for n, r in self.results.items() if r.status == status)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "execution_date": self.execution_date,
            "dbt_invocations": self.dbt_invocations,
            "results": {n: asdict(r) for n, r in self.results.items()},
            "ephemeral": dict(self.ephemeral),
            "interrupted": self.interrupted,
        }


class _BlockListener:
    """Maps dbt node events onto block results and Prefect task runs."""

    def __init__(self, pipeline: Pipeline, summary: RunSummary, reporter: TaskRunReporter | None) -> None:
        self._pipeline = pipeline
        self._summary = summary
        self._reporter = reporter
        self._names = {b.unique_id: b.name for b in pipeline.blocks.values() if b.unique_id}
        self._started: set[str] = set()

    def node_started(self, unique_id: str) -> None:
        block = self._pipeline.blocks[self._names[unique_id]]
        if block.is_ephemeral:
            return  # dbt only compiles it: a task run exists only if that fails
        self._started.add(unique_id)
        if self._reporter:
            self._reporter.started(block.name, kind=block.kind,
                                   upstream=through_ephemeral(self._pipeline.blocks, block.upstream))

    def node_finished(self, result: NodeResult) -> None:
        block = self._pipeline.blocks[self._names[result.unique_id]]
        status = SUCCESS if result.ok else SKIPPED if result.skipped else FAILED
        if status != SUCCESS and interrupted():  # stopped by Ctrl-C, not failed
            status, result = CANCELLED, replace(result, message=CANCELLED_MESSAGE)
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
        self._summary.results[block.name] = BlockResult(
            name=block.name, kind=block.kind, status=status, message=message,
            seconds=round(result.execution_time, 3), rows=result.rows_affected,
            dbt_status=result.status, unique_id=result.unique_id,
            failed_batches=[list(w) for w in result.batches_failed] or None, batches=batches or None,
        )
        if self._reporter:
            if result.unique_id not in self._started:  # dbt never started it: its task run still has to exist
                self.node_started(result.unique_id)
            self._report(block, status, result, message)

    def batch_started(self, unique_id: str, label: str) -> None:
        if self._reporter:
            self._reporter.batch_started(self._names[unique_id], label)

    def batch_finished(self, unique_id: str, label: str, *, ok: bool, skipped: bool, seconds: float) -> None:
        if self._reporter:
            self._reporter.batch_finished(self._names[unique_id], label, ok=ok, skipped=skipped, seconds=seconds)

    def _report(self, block, status, result: NodeResult, message) -> None:
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
                                    name="Warn" if result.status == "warn" else None)


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
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.context = context
        self.reporter = reporter
        self.executor = executor or InProcessDbtExecutor()
        self.summary = RunSummary(pipeline=pipeline.name, execution_date=context.date_vars()["execution_date"])
        # Node ids rebuilt with --full-refresh (targeted full refresh); None: context.full_refresh for all.
        self.full_refresh_nodes = full_refresh_nodes
        # Block outputs live on disk per run (mage_dbt.blocks.outputs); a retry passes a store whose
        # fallback_run_ids name the run it retries.
        self.outputs = outputs if outputs is not None else OutputStore(
            settings.data_dir, pipeline.name, context.run_id)

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
        """After Ctrl-C: every block without a result (running or not reached) is Cancelled."""
        self.summary.interrupted = True
        for name in self._topo():
            block = self.pipeline.blocks[name]
            if name in self.summary.results or block.is_ephemeral:
                continue
            self.summary.results[name] = BlockResult(name=name, kind=block.kind, status=CANCELLED,
                                                     message=CANCELLED_MESSAGE, unique_id=block.unique_id)
            if self.reporter:
                self.reporter.skipped(name, kind=block.kind, reason=CANCELLED_MESSAGE, state_name="Cancelled")

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
        listener = _BlockListener(self.pipeline, self.summary, self.reporter)
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

    def _invoke_dbt(self, ids: list[str], full_refresh: bool, listener: _BlockListener) -> None:
        assert self.pipeline.manifest is not None
        snapshots = snapshot_ids(self.pipeline.manifest, ids) if full_refresh and self.full_refresh_nodes else []
        moved = set_aside_snapshots(self.pipeline.manifest, snapshots) if snapshots else {}
        succeeded: set[str] = set()
        try:
            outcome = self.executor.run_nodes(
                self.pipeline.manifest, ids, context=self.context, listener=listener,
                command="build", full_refresh=full_refresh,
            )
            succeeded = {u for u, r in outcome.results.items() if r.ok}
        finally:
            settle_snapshots(self.pipeline.manifest, moved, succeeded)

    def _run_block(self, name: str) -> None:
        block = self.pipeline.blocks[name]
        if self.reporter:
            self.reporter.started(name, kind=block.kind, upstream=through_ephemeral(self.pipeline.blocks, block.upstream))
        env = BlockEnv(settings=self.settings, pipeline=self.pipeline, context=self.context,
                       outputs=self.outputs, reporter=self.reporter)
        started = time.perf_counter()
        try:
            outcome = run_block(block, env)
            status, message = SUCCESS, outcome.message
            self.outputs[name] = outcome.output
            rows = outcome.rows
        except Exception as exc:  # a block's failure is a result, not a crash of the run
            status, message, rows = FAILED, " ".join(str(exc).split()) or type(exc).__name__, None
            LOG.debug("block %s failed", name, exc_info=True)
        seconds = round(time.perf_counter() - started, 3)
        self.summary.results[name] = BlockResult(name=name, kind=block.kind, status=status, message=message,
                                                 seconds=seconds, rows=rows)
        if self.reporter:
            if message:
                self.reporter.log(name, message, logging.INFO if status == SUCCESS else logging.ERROR)
            self.reporter.finished(name, ok=status == SUCCESS, message=message)
