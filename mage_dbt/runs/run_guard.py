"""What every flow body that mage_dbt runs is wrapped in: the run's process lock and Ctrl-C.

`guarded(data_dir, body)` holds the flow run's process lock (`mage_dbt.runs.run_liveness`: a run whose
process dies is marked Crashed later) while `body` runs, and turns an interrupt
(`mage_dbt.runs.interrupts`) into a Cancelled flow run instead of Failed or Crashed: the blocks that
did not finish are already Cancelled by the runner, and the run says it was interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from mage_dbt.runs.interrupts import interrupted
from mage_dbt.runs.run_liveness import hold_run_lock

INTERRUPTED = "interrupted (Ctrl-C)"


def current_flow_run_id() -> str | None:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return str(ctx.flow_run.id) if ctx and ctx.flow_run else None


def guarded(data_dir: Path, body: Callable[[], Any]) -> Any:
    """Run `body` (a flow's work, returning its final state) under the run lock, Ctrl-C -> Cancelled."""
    from prefect.states import Cancelled, State

    with hold_run_lock(data_dir, current_flow_run_id()):
        try:
            result = body()
        except KeyboardInterrupt:
            if not interrupted():
                raise
            return Cancelled(message=f"{INTERRUPTED} before any block ran")
    if interrupted() and isinstance(result, State) and not (result.is_completed() or result.is_cancelled()):
        return Cancelled(message=f"{INTERRUPTED}: {result.message}", data=result.data)
    return result
