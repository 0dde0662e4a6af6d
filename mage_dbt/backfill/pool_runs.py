"""Backfills through a Prefect work pool: each interval is a flow run of the pipeline's deployment.

`mage-dbt backfill PIPELINE --work-pool NAME [--concurrency N]` (or the backfill flow's
`work_pool` parameter) does not run intervals itself: it submits them as runs of the pipeline's
deployment in pool NAME (created by `mage-dbt deploy PIPELINE --work-pool NAME`), tagged
`backfill:<id>` like every interval run, and linked to the backfill's flow run as subflows. Any
number of `prefect worker` processes on any machines run them.

The first pending interval runs alone (it may create the incremental tables). After it, at most N
run at once, twice over: this process keeps at most N submitted runs unfinished, and
every interval run holds a slot of the Prefect global concurrency limit `mage-dbt-backfill:<id>`
(limit N; `mage_dbt.runs.concurrency.tagged_slots`), so even runs left queued by an earlier
submitter never exceed it, and the warehouse never sees more than N intervals at once.

A pipeline with `depends_on_past: true` runs its intervals in date order, each submitted once its
predecessor completed. Resume: runs still queued or running (on any worker) are waited for, not
submitted again; a run whose worker died ends CRASHED (the server's missing-heartbeat automation,
`mage_dbt.deploy.zombie_runs`) and a `--resume` submits that interval again. Ctrl-C stops the
submitting; runs already in the pool go on (a resume waits for them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from mage_dbt.backfill.microbatch_phase import interval_select
from mage_dbt.backfill.plan import BackfillPlan, interval_key, interval_label
from mage_dbt.backfill.state import read_runs, run_interval_key
from mage_dbt.dates import Interval
from mage_dbt.errors import BackfillError
from mage_dbt.runs.concurrency import Slot, ensure_limits, slot_tag
from mage_dbt.runs.history import FLOW_NAME

POLL_SECONDS = 2.0  # how often the submitter reads the states of the runs it waits for
LIMIT_PREFIX = "mage-dbt-backfill:"
_FINAL = {"COMPLETED": "completed", "FAILED": "failed", "CRASHED": "crashed", "CANCELLED": "cancelled"}


def backfill_slot(plan: BackfillPlan, concurrency: int) -> Slot:
    """The Prefect global concurrency limit every interval run of a pool backfill holds."""
    return Slot(f"{LIMIT_PREFIX}{plan.id}", max(1, concurrency), f"backfill {plan.id}")


def pool_deployment(pipeline: str, work_pool: str) -> Any:
    """The pipeline's deployment in `work_pool`; BackfillError saying how to create it otherwise."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from mage_dbt.deploy.deployments import check_work_pool

    check_work_pool(work_pool)
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(f"{FLOW_NAME}/{pipeline}")
        except ObjectNotFound:
            deployment = None
    fix = f"deploy it there first: mage-dbt deploy {pipeline} --work-pool {work_pool}"
    if deployment is None:
        raise BackfillError(f"pipeline '{pipeline}' has no Prefect deployment to submit intervals to", hint=fix)
    if deployment.work_pool_name != work_pool:
        raise BackfillError(
            f"pipeline '{pipeline}' is deployed to work pool '{deployment.work_pool_name or '(none: served)'}', "
            f"not '{work_pool}'", hint=fix)
    return deployment


@dataclass
class _Submitted:
    interval: Interval
    label: str
    flow_run_id: str
    started: float


class PoolRuns:
    """Submits a backfill's pending intervals to a work pool and waits for them, at most `size` at once."""

    def __init__(self, execution: Any, work_pool: str, *, size: int, in_order: bool) -> None:
        self.execution = execution
        self.plan: BackfillPlan = execution.plan
        self.work_pool = work_pool
        self.size = 1 if in_order else max(1, size)
        self.in_order = in_order
        self.slot = backfill_slot(self.plan, self.size)

    def run(self, intervals: list[Interval]) -> None:
        from mage_dbt.runs.interrupts import interrupted

        deployment = pool_deployment(self.plan.pipeline, self.work_pool)
        ensure_limits([self.slot])
        queue, waiting = list(intervals), self._adopt_live(intervals)
        queue = [i for i in queue if interval_key(i) not in {interval_key(w.interval) for w in waiting}]
        self.execution.logger.info(
            "submitting %d interval(s) to work pool %s (deployment %s), at most %d at once%s%s",
            len(queue), self.work_pool, deployment.name, self.size, " in date order" if self.in_order else "",
            f"; waiting for {len(waiting)} run(s) already in the pool" if waiting else "")
        # As in a local backfill, the first pending interval runs alone: it creates missing incremental
        # tables (or rebuilds them, --full-refresh-first), which concurrent runs would collide on.
        alone = not waiting
        while (queue or waiting) and not interrupted():
            while queue and len(waiting) < (1 if alone else self.size) and not self._stopped():
                waiting.append(self._submit(deployment, queue.pop(0)))
            if not waiting:
                return
            waiting = self._still_running(waiting)
            alone = alone and bool(waiting)
            if waiting:
                time.sleep(POLL_SECONDS)  # the runs are on other machines: their states are polled

    def _stopped(self) -> bool:
        """After a failure: stop unless keep_going; always with depends_on_past (the next builds on it)."""
        return bool(self.execution.failures) and (self.in_order or not self.execution.keep_going)

    def _submit(self, deployment: Any, interval: Interval) -> _Submitted:
        from prefect.deployments import run_deployment

        plan = self.plan
        label = interval_label(interval, plan.interval)
        parameters = {
            "pipeline": plan.pipeline, "execution_date": interval.start.isoformat(),
            "full_refresh": interval_key(interval) == self.execution.refresh_key,
            "select": interval_select(plan), "target": plan.target,
        }
        # Unset values are left out: the deployment's defaults apply (its form types `target` as a string).
        parameters = {key: value for key, value in parameters.items() if value is not None}
        run = run_deployment(deployment.id, parameters=parameters, timeout=0, as_subflow=True,
                             tags=[plan.tag, slot_tag(self.slot)], flow_run_name=f"{plan.pipeline}-{label}")
        self.execution.sink.interval_started(label)
        self.execution.logger.info("interval %s submitted to %s: flow run %s", label, self.work_pool, run.id)
        return _Submitted(interval, label, str(run.id), time.perf_counter())

    def _adopt_live(self, intervals: list[Interval]) -> list[_Submitted]:
        """Runs of this backfill still queued or running in the pool (a resumed backfill): waited for."""
        wanted = {interval_key(i): i for i in intervals}
        live = {}
        for run in read_runs(self.plan.id, FLOW_NAME):
            key = run_interval_key(run)
            state = run.state.type.value if run.state else "PENDING"
            if key in wanted and state not in _FINAL:
                live[key] = _Submitted(wanted[key], interval_label(wanted[key], self.plan.interval), str(run.id),
                                       time.perf_counter())
        for submitted in live.values():
            self.execution.sink.interval_started(submitted.label)
        return sorted(live.values(), key=lambda s: s.interval.start)

    def _still_running(self, waiting: list[_Submitted]) -> list[_Submitted]:
        """Report the runs that ended; the rest, still waited for."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        with get_client(sync_client=True) as client:
            runs = {str(r.id): r for r in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[w.flow_run_id for w in waiting])))}
        left = []
        for submitted in waiting:
            run = runs.get(submitted.flow_run_id)
            state = run.state.type.value if run is not None and run.state else "PENDING"
            if state not in _FINAL:
                left.append(submitted)
                continue
            self.execution.finished(submitted.label, _FINAL[state], time.perf_counter() - submitted.started,
                                    run.state.message if run.state else None)
        return left
