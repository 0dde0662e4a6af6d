"""Past pipeline runs, read from the Prefect API: flow runs, their parameters and block states.

Run history lives in Prefect (see DESIGN): a pipeline run is a flow run of the `mage-dbt-pipeline`
flow whose `pipeline` parameter names the pipeline, and every block of the run is a task run named
after the block, whose final state says how the block ended (Completed, Failed, or Cancelled named
"Skipped"). A retry is tagged `retry-of:<flow run id>` for the run it retries and that run's own
retry ancestors, nearest first, so history can tell which failed runs were already retried.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator
from uuid import UUID

from mage_dbt.errors import MageDbtError

FLOW_NAME = "mage-dbt-pipeline"  # the flow of mage_dbt.flows.pipeline_flow: every pipeline run is one of its runs
RETRY_TAG = "retry-of:"
PAGE = 200


class RunNotFound(MageDbtError):
    """A flow run id that names no mage_dbt pipeline run in the Prefect API."""


@dataclass(frozen=True)
class PastRun:
    """One flow run of a pipeline."""

    id: str
    name: str
    pipeline: str
    parameters: dict[str, Any]
    state_type: str  # Prefect StateType value: COMPLETED, FAILED, CRASHED, ...
    state_name: str
    tags: tuple[str, ...]
    expected_start_time: datetime | None

    @property
    def retry_of(self) -> list[str]:
        """The runs this run retries, nearest first (empty for an ordinary run)."""
        return [t[len(RETRY_TAG):] for t in self.tags if t.startswith(RETRY_TAG)]


@dataclass(frozen=True)
class BlockState:
    """How one block of a run ended, from its task run."""

    name: str
    state_type: str
    state_name: str
    message: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.state_type == "COMPLETED"


def retry_tags(run: PastRun) -> list[str]:
    """Tags for a run that retries `run`: it, then the runs `run` itself retried."""
    return [f"{RETRY_TAG}{i}" for i in dict.fromkeys([run.id, *run.retry_of])]


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _past_run(flow_run: Any) -> PastRun:
    state = flow_run.state
    return PastRun(
        id=str(flow_run.id),
        name=flow_run.name,
        pipeline=str((flow_run.parameters or {}).get("pipeline") or ""),
        parameters=dict(flow_run.parameters or {}),
        state_type=state.type.value if state else "UNKNOWN",
        state_name=(state.name if state else None) or "",
        tags=tuple(flow_run.tags or ()),
        expected_start_time=flow_run.expected_start_time,
    )


def read_run(flow_run_id: str) -> PastRun:
    """The pipeline run `flow_run_id`, or a one-line RunNotFound."""
    from prefect.exceptions import ObjectNotFound

    hint = "copy the id from the `flow run:` line of `mage-dbt run` or from the Prefect UI"
    try:
        UUID(str(flow_run_id))
    except ValueError:
        raise RunNotFound(f"'{flow_run_id}' is not a flow run id", hint=hint) from None
    with _client() as client:
        try:
            flow_run = client.read_flow_run(UUID(str(flow_run_id)))
        except ObjectNotFound:
            raise RunNotFound(f"no flow run {flow_run_id} in the Prefect API ({_api_url()})", hint=hint) from None
        flow = client.read_flow(flow_run.flow_id)
    run = _past_run(flow_run)
    if flow.name != FLOW_NAME or not run.pipeline:
        raise RunNotFound(f"flow run {flow_run_id} is a run of flow '{flow.name}', not a mage_dbt pipeline run",
                          hint=hint)
    return run


def pipeline_runs(pipeline: str, *, state_types: list[str] | None = None) -> Iterator[PastRun]:
    """Runs of `pipeline`, newest first (optionally only those in `state_types`)."""
    from prefect.client.schemas.filters import (
        FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    run_filter = None
    if state_types:
        run_filter = FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType(s) for s in state_types])))
    offset = 0
    with _client() as client:
        while True:
            page = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])), flow_run_filter=run_filter,
                sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=PAGE, offset=offset,
            )
            for flow_run in page:
                if (flow_run.parameters or {}).get("pipeline") == pipeline:
                    yield _past_run(flow_run)
            if len(page) < PAGE:
                return
            offset += PAGE


def retried(run_ids: list[str]) -> set[str]:
    """Those of `run_ids` that some later run retries."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    if not run_ids:
        return set()
    wanted = {f"{RETRY_TAG}{i}" for i in run_ids}
    found: set[str] = set()
    offset = 0
    with _client() as client:
        while True:
            page = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(any_=sorted(wanted))),
                sort=FlowRunSort.ID_DESC, limit=PAGE, offset=offset)
            for flow_run in page:
                found |= {t[len(RETRY_TAG):] for t in (flow_run.tags or ()) if t in wanted}
            if len(page) < PAGE:
                return found
            offset += PAGE


def latest_unretried_failure(pipeline: str, belongs: Callable[[PastRun], bool] = lambda run: True) -> PastRun | None:
    """The newest failed, crashed or cancelled (Ctrl-C) run of `pipeline` for which `belongs` holds and no run
    retried yet."""
    runs = (run for run in pipeline_runs(pipeline, state_types=["FAILED", "CRASHED", "CANCELLED"]) if belongs(run))
    while True:
        batch = [run for _, run in zip(range(50), runs)]
        if not batch:
            return None
        done = retried([r.id for r in batch])
        for run in batch:
            if run.id not in done:
                return run


BATCH_TASK_KEY = "mage-dbt.microbatch-batch."


def block_states(flow_run_id: str) -> dict[str, BlockState]:
    """How each block of a run ended, by block name, from the run's task runs."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    states: dict[str, BlockState] = {}
    offset = 0
    with _client() as client:
        while True:
            page = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=PAGE, offset=offset,
            )
            for task_run in page:
                if task_run.task_key.startswith(BATCH_TASK_KEY):  # a microbatch batch, not a block
                    continue
                state = task_run.state
                states[task_run.name] = BlockState(
                    name=task_run.name,
                    state_type=state.type.value if state else "UNKNOWN",
                    state_name=(state.name if state else None) or "",
                    message=state.message if state else None,
                )
            if len(page) < PAGE:
                return states
            offset += PAGE


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or "the temporary local Prefect server"
