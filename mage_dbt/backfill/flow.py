"""The backfill as a Prefect flow: one parent flow run whose children are the interval runs.

`backfill_flow` is parameterized (pipeline, start, end, interval, concurrency, select,
full_refresh_first, target; or backfill_id to resume), so it can be started from a Prefect
deployment form as well as from `mage-dbt backfill`. Each interval is a run of the pipeline flow,
named after its date and tagged `backfill:<id>`:

* by default, intervals run in date order, one at a time, as subflows in this process; the parsed
  manifest is loaded once per process and reused for every date;
* with concurrency N, the first pending interval runs alone here (it creates missing incremental
  tables, or rebuilds them with --full-refresh-first), then N worker processes take the remaining
  intervals in date order (`mage_dbt.backfill.workers`); their runs are linked to this flow run as
  subflows too.

Intervals already completed are never re-run. A failed interval stops the backfill (later dates
may build on it) unless keep_going; the intervals left are picked up by a resume.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Iterator, Literal

from prefect import flow, get_run_logger, tags
from prefect.context import FlowRunContext
from prefect.states import Cancelled, Completed, Failed

from mage_dbt.backfill.artifacts import BackfillArtifacts
from mage_dbt.backfill.lock import BackfillLock, refuse_overlapping
from mage_dbt.backfill.safety import check_concurrency, order_warning
from mage_dbt.backfill.plan import (
    BackfillPlan,
    add_parent_run,
    check_unchanged,
    interval_key,
    interval_label,
    load_plan,
    make_plan,
    record_path,
    save_plan,
)
from mage_dbt.backfill.microbatch_phase import interval_select, plan_split
from mage_dbt.backfill.microbatch_run import run_microbatch_phase
from mage_dbt.backfill.progress import current_sink
from mage_dbt.backfill.state import (
    BACKFILL_FLOW_NAME, COMPLETED, count_statuses, interval_statuses, mark_crashed, project_tag,
)
from mage_dbt.dates import Interval
from mage_dbt.errors import BackfillError
from mage_dbt.flows import pipeline_flow
from mage_dbt.pipelines.pipeline import load_pipeline
from mage_dbt.runs.heartbeats import engine_heartbeats_off, flow_run_heartbeats
from mage_dbt.runs.interrupts import interrupted
from mage_dbt.settings import ProjectSettings, load_settings

DBT_WRITE_JSON = "DBT_WRITE_JSON"


def _backfill_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    if params.get("backfill_id"):
        return f"backfill-{params['backfill_id']}"
    return f"backfill-{params.get('pipeline')}-{params.get('start')}-{params.get('end')}"


@flow(name=BACKFILL_FLOW_NAME, flow_run_name=_backfill_run_name, validate_parameters=True, persist_result=False)
def backfill_flow(
    pipeline: str | None = None,
    start: str | None = None,
    end: str | None = None,
    interval: Literal["hour", "day", "week", "month"] | None = None,
    concurrency: int | None = None,
    select: list[str] | None = None,
    full_refresh_first: bool = False,
    target: str | None = None,
    backfill_id: str | None = None,
    force: bool = False,
    yes: bool = False,
    keep_going: bool = False,
    work_pool: str | None = None,
):
    """Backfill a pipeline over [start, end] (interval starts, both inclusive), or resume backfill_id.

    With work_pool, the intervals are submitted as runs of the pipeline's deployment in that
    Prefect work pool (at most `concurrency` at once) instead of running in this process."""
    settings = load_settings()
    settings.export_environment()
    plan = resolve_plan(
        settings, pipeline=pipeline, start=start, end=end, interval=interval, concurrency=concurrency,
        select=select, full_refresh_first=full_refresh_first, target=target, backfill_id=backfill_id,
        force=force, yes=yes, work_pool=work_pool,
    )
    ctx = FlowRunContext.get()
    run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    # Heartbeats: this flow's own thread when the CLI turned Prefect's off (no join wait at the end).
    lock_file = BackfillLock(record_path(settings, plan.id).with_suffix(".lock"))
    with flow_run_heartbeats(), lock_file.acquire(plan.id) as lock:
        refuse_overlapping(settings, plan)  # a deployment run is checked here (the CLI checked before)
        if run_id:
            _tag_flow_run(run_id, plan.tag, project_tag(settings.root))
            add_parent_run(settings, plan, run_id)
        # Runs in a work pool live on their workers, not in a process of this backfill: a resume waits
        # for them (pool_runs), and the server marks those whose worker died (missing heartbeats).
        crashed = [] if plan.work_pool else mark_crashed(plan.id, keep=[run_id] if run_id else [],
                                                         reason="its process is gone (backfill resumed)")
        resolved = load_pipeline(settings, plan.pipeline, target=plan.target, select=list(plan.select or ()) or None,
                                 dbt_vars=first_interval_vars(settings, plan))
        check_concurrency(resolved, concurrency or plan.concurrency, work_pool=plan.work_pool)
        if warning := order_warning(resolved, concurrency or plan.concurrency, work_pool=plan.work_pool):
            get_run_logger().warning(warning)
        split = plan_split(resolved)
        if split is not None and split.fallback:
            get_run_logger().warning("microbatch models run interval by interval, each interval with its own "
                                     "event-time window: %s", split.fallback)
        execution = BackfillExecution(
            settings, plan, concurrency=concurrency or plan.concurrency, keep_going=keep_going,
            parent_flow_run_id=run_id, lock_fd=lock.fd,
            target_path=resolved.dbt_ref.target_path if resolved.dbt_ref else None,
        )
        if crashed:
            execution.logger.warning("marked %d run(s) left by a dead process CRASHED: %s",
                                     len(crashed), ", ".join(crashed[:10]))
        state = execution.run()
    from mage_dbt.runs.pipeline_events import BACKFILL_FINISHED, emit_pipeline_event

    emit_pipeline_event(BACKFILL_FINISHED, plan.pipeline, {  # `notify: {on: [backfill_finished]}`
        "execution_date": f"{plan.intervals[0].start.isoformat() if plan.intervals else ''} .. "
                          f"{plan.intervals[-1].start.isoformat() if plan.intervals else ''}",
        "message": f"backfill {plan.id} ended {getattr(state, 'name', state)}: {getattr(state, 'message', '')}",
        "next": f"mage-dbt backfill --resume {plan.id}"}, run_id)
    return state


def first_interval_vars(settings: ProjectSettings, plan: BackfillPlan) -> dict[str, Any] | None:
    """The dbt vars of the plan's first interval: the manifest its intervals are parsed for."""
    from mage_dbt.context import run_dbt_vars
    from mage_dbt.pipelines.spec import load_pipeline_spec

    if not plan.intervals:
        return None
    return run_dbt_vars(load_pipeline_spec(settings.flows_dir, plan.pipeline), plan.intervals[0].start)


def resolve_plan(
    settings: ProjectSettings, *, backfill_id: str | None, force: bool = False, **request: Any
) -> BackfillPlan:
    """The plan to run: a recorded one (resume, checked for pipeline changes) or a new one."""
    if backfill_id:
        if request.get("work_pool"):
            raise BackfillError(f"resuming {backfill_id} uses its recorded work pool; it takes no work_pool")
        recorded = load_plan(settings, backfill_id)
        plan = check_unchanged(settings, recorded, force=force)
        if plan is not recorded:
            save_plan(settings, plan)
        return plan
    if not (request.get("pipeline") and request.get("start") and request.get("end")):
        raise BackfillError("a backfill needs pipeline, start and end (or backfill_id to resume one)")
    plan, _ = make_plan(
        settings, request["pipeline"], request["start"], request["end"], interval=request.get("interval"),
        select=request.get("select"), target=request.get("target"),
        full_refresh_first=bool(request.get("full_refresh_first")), concurrency=request.get("concurrency") or 1,
        yes=bool(request.get("yes")), work_pool=request.get("work_pool"),
    )
    save_plan(settings, plan)
    return plan


@contextlib.contextmanager
def without_dbt_artifacts(target_path: Path | None) -> Iterator[None]:
    """Interval runs skip dbt's manifest.json / run_results.json (DBT_WRITE_JSON=false).

    dbt rewrites the same manifest after every invocation: for a backfill that is waste (about a
    tenth of an interval). Results live in Prefect and in each run's summary.json. A parse in this
    process (dbt code edited mid-backfill) then writes no manifest.json either, and the manifest
    cache falls back to dbt's in-memory manifest, provided no stale manifest.json of this process
    is lying around: hence the unlink.
    """
    previous = os.environ.get(DBT_WRITE_JSON)
    apply_no_dbt_artifacts(target_path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(DBT_WRITE_JSON, None)
        else:
            os.environ[DBT_WRITE_JSON] = previous


def apply_no_dbt_artifacts(target_path: Path | None) -> None:
    if target_path is not None:
        (target_path / "manifest.json").unlink(missing_ok=True)
    os.environ[DBT_WRITE_JSON] = "false"


def _tag_flow_run(flow_run_id: str, *new_tags: str) -> None:
    """Add the backfill's tags to this flow run (a deployment run cannot know the id beforehand)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        missing = [t for t in new_tags if t not in run.tags]
        if missing:
            client.update_flow_run(flow_run_id, tags=[*run.tags, *missing])


class BackfillExecution:
    """Runs the pending intervals of one plan and reports them to the progress sink and Prefect logs."""

    def __init__(
        self,
        settings: ProjectSettings,
        plan: BackfillPlan,
        *,
        concurrency: int = 1,
        keep_going: bool = False,
        parent_flow_run_id: str | None = None,
        lock_fd: int | None = None,
        target_path: Path | None = None,
    ) -> None:
        self.settings = settings
        self.plan = plan
        self.concurrency = max(1, concurrency)
        self.keep_going = keep_going
        self.parent_flow_run_id = parent_flow_run_id
        self.lock_fd = lock_fd
        self.sink = current_sink()
        self.logger = get_run_logger()
        self.failures = 0
        self.target_path = target_path
        self.artifacts = BackfillArtifacts(enabled=parent_flow_run_id is not None)  # backfill/artifacts.py

    def run(self):
        plan = self.plan
        statuses = interval_statuses(plan)
        todo = [i for i in plan.intervals if statuses[interval_key(i)].status != COMPLETED]
        first = plan.intervals[0]
        self.refresh_key = interval_key(first) if plan.full_refresh_first and first in todo else None
        self.logger.info(
            "backfill %s: %s %s..%s, %d %s intervals, %d to run%s",
            plan.id, plan.pipeline, plan.start, plan.end, len(plan.intervals), plan.interval, len(todo),
            f", {self.concurrency} at a time" if self.concurrency > 1 else "",
        )
        self.sink.begin(plan.id, len(plan.intervals), len(plan.intervals) - len(todo), len(todo))
        self.artifacts.begin(plan.id, len(plan.intervals), len(plan.intervals) - len(todo))
        try:
            with without_dbt_artifacts(self.target_path):
                if run_microbatch_phase(self, todo):
                    self._run_all(todo)
        except KeyboardInterrupt:  # Ctrl-C between intervals: the backfill ends Cancelled below
            if not interrupted():
                raise
        finally:
            self.sink.end()
        return self._final_state()

    def _run_all(self, todo: list[Interval]) -> None:
        if self.plan.work_pool:
            from mage_dbt.backfill.pool_runs import PoolRuns
            from mage_dbt.pipelines.spec import load_pipeline_spec

            in_order = load_pipeline_spec(self.settings.flows_dir, self.plan.pipeline).depends_on_past
            PoolRuns(self, self.plan.work_pool, size=self.concurrency, in_order=in_order).run(todo)
        elif self.concurrency > 1 and len(todo) > 1:
            head, rest = todo[:1], todo[1:]
            self._run_here(head)
            if rest and (self.keep_going or not self.failures):
                self._run_in_workers(rest)
        else:
            self._run_here(todo)

    # -- in this process --------------------------------------------------------------------------
    def _run_here(self, intervals: list[Interval]) -> None:
        plan = self.plan
        for interval in intervals:
            if self.failures and not self.keep_going:
                return
            label = interval_label(interval, plan.interval)
            self.sink.interval_started(label)
            started = time.perf_counter()
            with tags(plan.tag), engine_heartbeats_off():
                state = pipeline_flow(
                    pipeline=plan.pipeline, execution_date=interval.start,
                    full_refresh=interval_key(interval) == self.refresh_key,
                    select=interval_select(plan), target=plan.target, return_state=True,
                )
            status = ("completed" if state.is_completed() else "crashed" if state.is_crashed()
                      else "cancelled" if state.is_cancelled() else "failed")
            self.finished(label, status, time.perf_counter() - started, state.message)
            if interrupted():
                return

    def finished(self, label: str, status: str, seconds: float, message: str | None) -> None:
        if status != "completed":
            self.failures += 1
            log = self.logger.info if status == "cancelled" else self.logger.error  # Ctrl-C: not an error
            log("interval %s %s in %.1fs: %s", label, status, seconds, message)
        else:
            self.logger.info("interval %s completed in %.1fs", label, seconds)
        self.sink.interval_finished(label, status, seconds, message)
        self.artifacts.finished(label, seconds)

    # -- in worker processes ----------------------------------------------------------------------
    def _run_in_workers(self, intervals: list[Interval]) -> None:
        from mage_dbt.backfill.workers import WorkerPool

        pool = WorkerPool(
            self.settings, self.plan, size=self.concurrency, parent_flow_run_id=self.parent_flow_run_id,
            lock_fd=self.lock_fd,
        )
        pool.run(
            intervals,
            on_started=self.sink.interval_started,
            on_finished=self.finished,
            should_stop=lambda: bool(self.failures) and not self.keep_going,
        )

    # -- outcome ----------------------------------------------------------------------------------
    def _final_state(self):
        plan = self.plan
        statuses = interval_statuses(plan)
        counts = count_statuses(statuses)
        labels = {interval_key(i): interval_label(i, plan.interval) for i in plan.intervals}
        data = {
            "backfill_id": plan.id,
            "pipeline": plan.pipeline,
            "counts": dict(counts),
            "intervals": {labels[k]: {"status": s.status, "attempts": s.attempts, "flow_run_id": s.flow_run_id,
                                      "message": s.message} for k, s in statuses.items()},
        }
        summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        self.artifacts.final_table(plan.pipeline, plan.id, data["intervals"])
        if interrupted():
            return Cancelled(message=f"interrupted (Ctrl-C) with {counts.get(COMPLETED, 0)} of {len(plan.intervals)} "
                             f"intervals completed; resume with: mage-dbt backfill --resume {plan.id}", data=data)
        if counts.get(COMPLETED, 0) == len(plan.intervals):
            return Completed(message=f"{len(plan.intervals)} intervals completed", data=data)
        return Failed(
            message=f"{len(plan.intervals) - counts.get(COMPLETED, 0)} of {len(plan.intervals)} intervals did not "
            f"complete ({summary}); resume with: mage-dbt backfill --resume {plan.id}",
            data=data,
        )
