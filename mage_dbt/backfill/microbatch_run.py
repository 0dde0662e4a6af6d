"""Running a backfill's microbatch phase (planned by `mage_dbt.backfill.microbatch_phase`).

The phase is one pipeline flow run of the phase's blocks, for the first interval's date with
`event_time_end` = the last interval's end: dbt runs every batch of the range in one invocation,
and each batch gets its own task run. A phase that completed is never run again. A phase that
failed is resumed like `mage-dbt retry`: a new run tagged `retry-of:<failed phase run>` re-runs
only the phase blocks that did not succeed, and of a microbatch model only its failed batches
(`mage_dbt.runs.pipeline_run.failed_batches_of`). The intervals (the blocks outside the phase) run
after it; when there are none, each interval takes the phase's outcome.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import tags

from mage_dbt.backfill.microbatch_phase import PHASE_TAG
from mage_dbt.backfill.plan import BackfillPlan, interval_label
from mage_dbt.backfill.state import COMPLETED, read_runs
from mage_dbt.flows import pipeline_flow
from mage_dbt.runs.heartbeats import engine_heartbeats_off
from mage_dbt.runs.history import FLOW_NAME, RETRY_TAG, block_states


def run_microbatch_phase(execution: Any, todo: list) -> bool:
    """Run the plan's microbatch phase unless it completed before; True when the intervals may run."""
    plan: BackfillPlan = execution.plan
    if not plan.microbatch_blocks:
        return True
    runs = [r for r in read_runs(plan.id, FLOW_NAME) if PHASE_TAG in (r.tags or ())]
    if any(r.state and r.state.is_completed() for r in runs):
        execution.logger.info("microbatch phase of backfill %s completed before: not run again", plan.id)
        return True
    first, last = plan.intervals[0], plan.intervals[-1]
    select, retry = list(plan.microbatch_blocks), []
    if runs:  # resume a failed phase: only what did not succeed, and only the failed batches
        states = block_states(str(runs[-1].id))
        select = [n for n in select if not (n in states and states[n].succeeded)] or select
        retry = [f"{RETRY_TAG}{runs[-1].id}"]
    label = f"{interval_label(first, plan.interval)}..{interval_label(last, plan.interval)}"
    execution.logger.info("microbatch phase: %d block(s) over %s in one dbt invocation: %s",
                          len(select), label, ", ".join(select[:10]))
    started = time.perf_counter()
    shown = f"microbatch phase {label}"
    execution.sink.phase_started(shown)
    with tags(plan.tag, PHASE_TAG, *retry), engine_heartbeats_off():
        state = pipeline_flow(
            pipeline=plan.pipeline, execution_date=first.start, event_time_end=last.end,
            full_refresh=plan.full_refresh_first and not runs, select=select, target=plan.target,
            return_state=True,
        )
    seconds = time.perf_counter() - started
    status = ("completed" if state.is_completed() else "crashed" if state.is_crashed()
              else "cancelled" if state.is_cancelled() else "failed")
    execution.sink.phase_finished(shown, status, seconds, None if status == COMPLETED else state.message)
    if plan.interval_blocks == ():  # nothing runs per interval: each interval ends with the phase
        for interval in todo:
            execution.finished(interval_label(interval, plan.interval), status, seconds / max(1, len(todo)),
                               state.message)
    elif status != COMPLETED:
        execution.failures += 1
        execution.logger.error("microbatch phase %s %s in %.1fs: %s", label, status, seconds, state.message)
    else:
        execution.logger.info("microbatch phase %s completed in %.1fs", label, seconds)
    return status == COMPLETED and bool(plan.interval_blocks)
