"""The Prefect flow that runs one pipeline for one execution date: `mage_dbt.flows.pipeline_flow`.

Deployments name the flow by this module path (`entrypoint: mage_dbt.flows.pipeline_flow`, in
`mage-dbt deploy`, `prefect.yaml` and deployments already registered), so the flow is defined here
and stays here. Parameters are first-class and typed (the Prefect UI renders them as a form and
rejects wrong types before anything runs); the run itself is `mage_dbt.runs.pipeline_run`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow

from mage_dbt.runs.history import FLOW_NAME
from mage_dbt.runs.pipeline_run import run_and_report, run_pipeline, scheduled_time, summary_lines

__all__ = ["FLOW_NAME", "pipeline_flow", "run_and_report", "scheduled_time", "summary_lines"]


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    when = params.get("execution_date") or flow_run.scheduled_start_time
    if isinstance(when, datetime):
        when = when.date().isoformat() if when.time() == datetime.min.time() else when.isoformat()
    name = f"{params.get('pipeline', 'pipeline')}-{str(when)[:19]}"
    until = params.get("event_time_end")  # a backfill's microbatch phase: the whole range at once
    return f"{name}..{until.isoformat()[:19] if isinstance(until, datetime) else str(until)[:19]}" if until else name


@flow(name=FLOW_NAME, flow_run_name=_flow_run_name, validate_parameters=True, persist_result=False)
def pipeline_flow(
    pipeline: str,
    execution_date: datetime | None = None,
    full_refresh: bool = False,
    select: list[str] | None = None,
    target: str | None = None,
    vars: dict[str, Any] | None = None,
    ref: str | None = None,
    full_refresh_select: list[str] | None = None,
    check_drift: bool = True,
    event_time_end: datetime | None = None,
    reuse: bool | None = None,
    changed: bool = False,
    state_target: str | None = None,
):
    """Run a mage_dbt pipeline (dbt, Python and SQL blocks) for one execution date.

    Args:
        pipeline: The pipeline to run (the name of its file in the project's flows/ folder).
        execution_date: The date (or timestamp) this run processes. Leave empty on scheduled
            runs: the run's scheduled start time is used, so a late run still processes its own date.
        full_refresh: Rebuild incremental models from scratch (dbt --full-refresh).
        select: Run only these blocks: block names or dbt selectors like +fct_orders or tag:daily.
        target: The dbt target from profiles.yml; empty means the pipeline's or profile's default.
        vars: Extra dbt vars for this run, merged over the pipeline's own vars.
        ref: Run once against this branch, tag or commit of the git-synced dbt project; empty
            uses the current revision (synced first when the pipeline has sync_on_run).
        full_refresh_select: With full_refresh, rebuild only the incremental models these dbt
            selectors or block names match (snapshots only when named exactly); the rest runs normally.
        check_drift: Compare incremental models' columns with their tables first and apply the
            pipeline's on_drift setting (fail, full_refresh or warn).
        event_time_end: Microbatch models process the event-time window from the execution
            date's interval start to this moment in one dbt invocation (backfills); empty means
            the interval's end.
        reuse: Skip dbt nodes whose code, config, macros, vars, upstream data and interval are
            unchanged since their last successful build on this target (reported "Reused");
            empty means the pipeline's `reuse:` setting. A full refresh never reuses.
        changed: Run only the dbt nodes modified since the last successful run on the state
            target, and their downstream (dbt's state:modified+), deferring to that run's
            relations for parents this run does not build.
        state_target: With changed: the target whose last successful run is the state
            (e.g. prod while running on dev); empty means this run's target.
    """
    return run_pipeline(
        pipeline, execution_date=execution_date, full_refresh=full_refresh, select=select, target=target,
        vars=vars, ref=ref, full_refresh_select=full_refresh_select, check_drift=check_drift,
        event_time_end=event_time_end, reuse=reuse, changed=changed, state_target=state_target,
    )
