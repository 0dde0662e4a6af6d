"""Retry from failure: re-run only the blocks of a past run that did not succeed.

A retry reads the run from Prefect (`mage_dbt.runs.history`): its parameters (execution date, full
refresh, target, vars, selection) and how each block ended. The blocks of the run's selection
whose task run did not complete (failed, or skipped because an upstream failed; for a run that
crashed midway also the blocks it never reached) run again as a NEW flow run with the same
parameters and `select` set to those block names; blocks that succeeded are not re-run. The new run is tagged
`retry-of:<original id>` (plus the original's own retry ancestors), which is how history knows a
failed run was retried and how a retry finds the outputs of the blocks it did not re-run.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prefect import tags

from mage_dbt.dates import parse_execution_date
from mage_dbt.errors import ConfigError
from mage_dbt.flows import pipeline_flow
from mage_dbt.pipelines.pipeline import load_pipeline
from mage_dbt.pipelines.spec import load_pipeline_spec
from mage_dbt.runs.history import BlockState, PastRun, block_states, latest_unretried_failure, read_run, retry_tags
from mage_dbt.runs.prefect_setup import run_flow_quietly
from mage_dbt.settings import ProjectSettings


@dataclass(frozen=True)
class RetryPlan:
    """What a retry will run: which blocks of which run, with which parameters."""

    source: PastRun
    execution_date: datetime
    parameters: dict[str, Any]  # pipeline_flow keyword arguments, `select` = the blocks to re-run
    blocks: tuple[str, ...]
    succeeded: tuple[str, ...]
    gone: tuple[str, ...]  # did not succeed, but are no longer blocks of the pipeline
    states: dict[str, BlockState]

    @property
    def tags(self) -> list[str]:
        return retry_tags(self.source)


def find_run(settings: ProjectSettings, pipeline: str | None, run_id: str | None) -> PastRun | None:
    """The run to retry: `run_id`, else the newest failed run of `pipeline` not yet retried.

    One Prefect server can hold the runs of several mage_dbt projects with a pipeline of the same
    name; a run belongs to this project when it left its summary under this project's data folder.
    """
    if run_id:
        run = read_run(run_id)
        if pipeline and run.pipeline != pipeline:
            raise ConfigError(f"flow run {run_id} is a run of pipeline '{run.pipeline}', not '{pipeline}'",
                              hint=f"run `mage-dbt retry --run {run_id}` without a pipeline name")
        return run
    if not pipeline:
        raise ConfigError("nothing names the run to retry",
                          hint="give a pipeline (its latest failed run) or --run FLOW_RUN_ID")
    return latest_unretried_failure(pipeline, belongs=lambda run: (settings.data_dir / "runs" / run.id).is_dir())


def plan_retry(settings: ProjectSettings, run: PastRun) -> RetryPlan:
    """Resolve the run's pipeline as it was selected and pick the blocks that did not succeed."""
    params = run.parameters
    spec = load_pipeline_spec(settings.flows_dir, run.pipeline)
    when_raw = params.get("execution_date") or run.expected_start_time
    if when_raw is None:
        raise ConfigError(f"flow run {run.id} has no execution date and no scheduled time",
                          hint=f"run it again with `mage-dbt run {run.pipeline} --execution-date ...`")
    when = parse_execution_date(when_raw, spec.timezone)
    resolved = load_pipeline(settings, run.pipeline, target=params.get("target"), select=params.get("select"))
    states = block_states(run.id)
    ok = tuple(sorted(n for n in resolved.blocks if n in states and states[n].succeeded))
    if run.state_type in ("COMPLETED", "FAILED") and states:
        # The runner reported every block of a run it finished: re-run what it reported as not done.
        todo = tuple(sorted(n for n in resolved.blocks if n in states and not states[n].succeeded))
    else:  # crashed or cancelled midway: blocks it never reached did not run either
        # (ephemeral models have no task run unless they failed: dbt compiles them into the
        # models that ref them, which is where a retry runs them again)
        todo = tuple(sorted(n for n in resolved.blocks
                            if n not in ok and (n in states or not resolved.blocks[n].is_ephemeral)))
    gone = tuple(sorted(n for n, s in states.items() if not s.succeeded and n not in resolved.blocks))
    parameters = {**_flow_parameters(params), "pipeline": run.pipeline, "execution_date": when, "select": list(todo)}
    return RetryPlan(source=run, execution_date=when, parameters=parameters, blocks=todo, succeeded=ok,
                     gone=gone, states=states)


def _flow_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """The original run's parameters that the pipeline flow still takes (full refresh, target, vars, ref...)."""
    accepted = inspect.signature(pipeline_flow.fn).parameters
    return {k: v for k, v in params.items() if k in accepted}


def run_retry(plan: RetryPlan) -> dict:
    """Run the plan as a new flow run tagged with the run it retries; return its summary."""
    with tags(*plan.tags):
        return run_flow_quietly(pipeline_flow, **plan.parameters)
