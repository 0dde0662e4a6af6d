"""What Prefect knows about a backfill: the state of each interval, read from flow runs by tag.

Every interval run is a flow run of the pipeline flow tagged `backfill:<id>`; the backfill itself
is a flow run of the backfill flow with the same tag. An interval may have several runs (attempts);
it counts as completed as soon as one of them completed, otherwise its latest run decides.
Runs left RUNNING by a process that died (SIGKILL, power loss) are marked CRASHED on resume, once
the backfill's lock shows that no process of it is alive.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Iterable

from mage_dbt.backfill.microbatch_phase import PHASE_TAG
from mage_dbt.backfill.plan import BackfillPlan, backfill_tag, interval_key
from mage_dbt.runs.history import FLOW_NAME

BACKFILL_FLOW_NAME = "mage-dbt-backfill"  # the flow of backfill.flow.backfill_flow, tagged like its intervals

COMPLETED, FAILED, CRASHED, RUNNING, CANCELLED, NOT_STARTED = (
    "completed", "failed", "crashed", "running", "cancelled", "not started",
)
STATUS_ORDER = (COMPLETED, FAILED, CRASHED, CANCELLED, RUNNING, NOT_STARTED)
_LIVE = {"RUNNING", "PENDING", "SCHEDULED", "PAUSED", "CANCELLING"}
_PAGE = 200


@dataclass(frozen=True)
class IntervalStatus:
    """The backfill-level state of one interval."""

    key: str
    status: str
    attempts: int = 0
    flow_run_id: str | None = None
    message: str | None = None


def read_runs(backfill_id: str, flow_name: str, client: Any = None) -> list[Any]:
    """Every flow run of flow `flow_name` tagged with the backfill, oldest first."""
    if client is None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as own:
            return read_runs(backfill_id, flow_name, own)
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    runs: list[Any] = []
    while True:
        page = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[backfill_tag(backfill_id)])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=_PAGE,
            offset=len(runs),
        )
        runs.extend(page)
        if len(page) < _PAGE:
            return sorted(runs, key=lambda r: r.created or datetime.min)


def _status_of(run: Any) -> str:
    state_type = run.state.type.value if run.state else "PENDING"
    if state_type == "COMPLETED":
        return COMPLETED
    if state_type in ("FAILED",):
        return FAILED
    if state_type == "CRASHED":
        return CRASHED
    if state_type == "CANCELLED":
        return CANCELLED
    return RUNNING


def run_interval_key(run: Any) -> str | None:
    """The interval a pipeline flow run processed, from its `execution_date` parameter."""
    value = (run.parameters or {}).get("execution_date")
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    return interval_key(value) if isinstance(value, datetime) and value.tzinfo else None


def interval_statuses(plan: BackfillPlan, runs: Iterable[Any] | None = None) -> dict[str, IntervalStatus]:
    """The status of every interval of `plan`, keyed like `interval_key`, in date order."""
    if runs is None:
        runs = read_runs(plan.id, FLOW_NAME)
    runs = list(runs)
    phase = [r for r in runs if PHASE_TAG in (r.tags or ())]
    if plan.microbatch_blocks and plan.interval_blocks == ():  # nothing runs per interval: the phase decides
        status = _latest_status("phase", phase)
        return {interval_key(i): replace(status, key=interval_key(i)) for i in plan.intervals}
    by_key: dict[str, list[Any]] = {}
    for run in (r for r in runs if PHASE_TAG not in (r.tags or ())):
        key = run_interval_key(run)
        if key is not None:
            by_key.setdefault(key, []).append(run)
    out: dict[str, IntervalStatus] = {}
    for interval in plan.intervals:
        key = interval_key(interval)
        out[key] = _latest_status(key, by_key.get(key, []))
    return out


def phase_status(plan: BackfillPlan, runs: Iterable[Any] | None = None) -> IntervalStatus | None:
    """The state of the backfill's microbatch phase (mage_dbt.backfill.microbatch_phase), if it has one."""
    if not plan.microbatch_blocks:
        return None
    if runs is None:
        runs = read_runs(plan.id, FLOW_NAME)
    return _latest_status("phase", [r for r in runs if PHASE_TAG in (r.tags or ())])


def _latest_status(key: str, attempts: list[Any]) -> IntervalStatus:
    """Completed as soon as one attempt completed; otherwise the latest attempt decides."""
    if not attempts:
        return IntervalStatus(key=key, status=NOT_STARTED)
    done = [r for r in attempts if _status_of(r) == COMPLETED]
    chosen = done[-1] if done else attempts[-1]
    return IntervalStatus(
        key=key, status=_status_of(chosen), attempts=len(attempts), flow_run_id=str(chosen.id),
        message=chosen.state.message if chosen.state else None,
    )


def count_statuses(statuses: dict[str, IntervalStatus]) -> Counter:
    return Counter(s.status for s in statuses.values())


def mark_crashed(backfill_id: str, *, keep: Iterable[str] = (), reason: str) -> list[str]:
    """Mark the backfill's unfinished flow runs CRASHED (their process is gone); returns their names.

    Only call this while holding the backfill's lock: then no live process can own these runs.
    """
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    keep_ids = {str(k) for k in keep}
    marked = []
    with get_client(sync_client=True) as client:
        for flow_name in (FLOW_NAME, BACKFILL_FLOW_NAME):
            for run in read_runs(backfill_id, flow_name, client):
                if str(run.id) in keep_ids or not run.state or run.state.type.value not in _LIVE:
                    continue
                client.set_flow_run_state(run.id, Crashed(message=reason), force=True)
                marked.append(run.name)
    return marked


def phase_batches(plan: BackfillPlan, runs: Iterable[Any] | None = None) -> list[IntervalStatus]:
    """The state of every batch (key: its task run name, "<model> batch <start>") over the
    backfill's microbatch phase runs, decided like an interval's: a later success wins."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    from mage_dbt.runs.history import BATCH_TASK_KEY

    if runs is None:
        runs = read_runs(plan.id, FLOW_NAME)
    ids = [r.id for r in runs if PHASE_TAG in (r.tags or ())]
    if not ids:
        return []
    seen: dict[str, list[Any]] = {}
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            page = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                                         sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=_PAGE, offset=offset)
            for task_run in page:
                if task_run.task_key.startswith(BATCH_TASK_KEY):
                    seen.setdefault(task_run.name, []).append(task_run)
            if len(page) < _PAGE:
                break
            offset += _PAGE
    out = []
    for name, attempts in sorted(seen.items()):
        status = _latest_status(name, attempts)
        skipped = status.status == CANCELLED and attempts[-1].state_name == "Skipped"  # dbt skipped the batch
        out.append(replace(status, status="skipped") if skipped else status)
    return out


def project_tag(root: Any) -> str:
    """The tag a backfill flow run carries to say which mage_dbt project it belongs to: a hash of the
    project folder's path (machines that run one project's work-pool runs keep it at the same path)."""
    import hashlib
    from pathlib import Path

    return f"mage-dbt-project:{hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:12]}"


def running_backfill_runs(pipeline: str, *, exclude: str, project: str) -> list[tuple[str, str, str]]:
    """(backfill id, first day, last day) of the backfill flow runs of `pipeline` in the project tagged
    `project` (`project_tag`) running or about to run on the Prefect server, other than backfill
    `exclude`'s; days as ISO dates."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    live = [StateType.RUNNING, StateType.PENDING]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[BACKFILL_FLOW_NAME])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=live))),
            limit=_PAGE)
    out = []
    for run in runs:
        params = run.parameters or {}
        ids = [t.removeprefix(backfill_tag("")) for t in run.tags or () if t.startswith(backfill_tag(""))]
        if project not in (run.tags or ()) or params.get("pipeline") != pipeline or exclude in ids \
                or params.get("backfill_id") == exclude:
            continue  # (a backfill's own flow run gets its tag only once it runs: backfill_id tells then)
        out.append((ids[0] if ids else str(run.id), str(params.get("start") or "")[:10], str(params.get("end") or "")[:10]))
    return out
