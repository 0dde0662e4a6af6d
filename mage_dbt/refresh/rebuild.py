"""Flows of the full-refresh feature: a targeted full refresh of a dbt project, and rebuild with history.

`rebuild_flow` full-refreshes the selected incremental models for the first date of a range, then
runs them for every following date in order, so models whose logic depends on the execution date
(cumulative snapshots, delete+insert by date) end up as if they had run every day. Each date is a
child flow run of `pipeline_flow` in this same process, so the manifest is parsed at most once.

`dbt_project_refresh_flow` is `mage-dbt full-refresh` for a dbt project that has no pipeline file:
the project's nodes form an ad-hoc pipeline and the targeted refresh runs through the same runner.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.states import Cancelled, Completed, Failed

from mage_dbt.context import make_context
from mage_dbt.dates import interval_for, intervals_between
from mage_dbt.errors import MageDbtError
from mage_dbt.flows import pipeline_flow
from mage_dbt.pipelines.pipeline import load_pipeline, restrict
from mage_dbt.refresh.full_refresh import plan_full_refresh, resolve_refresh_target
from mage_dbt.runs.heartbeats import flow_run_heartbeats
from mage_dbt.runs.interrupts import interrupted
from mage_dbt.runs.pipeline_run import run_and_report, scheduled_time
from mage_dbt.runs.run_guard import INTERRUPTED, current_flow_run_id
from mage_dbt.runs.run_liveness import hold_run_lock
from mage_dbt.settings import load_settings

REBUILD_FLOW = "mage-dbt-rebuild"
DBT_PROJECT_REFRESH_FLOW = "mage-dbt-full-refresh"
MAX_DATES = 3660


def _rebuild_run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return f"rebuild-{p.get('pipeline')}-{str(p.get('start'))[:10]}..{str(p.get('end'))[:10]}"


def rebuild_dates(settings, pipeline: str, start: Any, end: Any, target: str | None = None) -> list[datetime]:
    """The execution dates of a rebuild: every interval start of the pipeline in [start, end]."""
    spec = load_pipeline(settings, pipeline, target=target).spec
    return [i.start for i in intervals_between(start, end, spec.interval, spec.timezone, limit=MAX_DATES)]


@flow(name=REBUILD_FLOW, flow_run_name=_rebuild_run_name, validate_parameters=True, persist_result=False)
def rebuild_flow(
    pipeline: str,
    select: list[str],
    start: datetime,
    end: datetime,
    target: str | None = None,
    vars: dict[str, Any] | None = None,
):
    """Full-refresh the selected incremental models for `start`, then run them for each later date to `end`.

    Args:
        pipeline: The pipeline (flows/<name>.yaml).
        select: dbt selectors or block names; only the incremental models they match are rebuilt.
        start: First date: the models are rebuilt from scratch for it.
        end: Last date (inclusive): every date in between runs in order, one child flow run each.
        target: The dbt target from profiles.yml; empty means the pipeline's or profile's default.
        vars: Extra dbt vars for every date.
    """
    with flow_run_heartbeats(), hold_run_lock(load_settings().data_dir, current_flow_run_id()):  # run_liveness
        logger = get_run_logger()
        settings = load_settings()
        resolved = load_pipeline(settings, pipeline, target=target)
        plan = plan_full_refresh(resolved, select)
        dates = rebuild_dates(settings, pipeline, start, end, target)
        models = list(plan.refresh)
        logger.info("rebuild of %s over %d dates (%s .. %s)", ", ".join(models), len(dates), dates[0], dates[-1])
        # Microbatch models: full refresh + every batch of the range in the first date's invocation.
        at_once = microbatch_at_once(resolved, models, logger)
        until = rebuild_window_end(resolved, dates[-1]) if at_once else None
        rows: list[dict[str, Any]] = []
        for index, when in enumerate(dates):
            first = index == 0
            todo = models if first else [m for m in models if m not in at_once]
            if not todo:
                break
            state = pipeline_flow(
                pipeline=pipeline, execution_date=when, full_refresh=first,
                full_refresh_select=models if first else None, select=todo, target=target, vars=vars,
                check_drift=first, return_state=True, event_time_end=until if first else None,
            )
            data = _state_data(state)
            failed = sorted(n for n, r in (data.get("results") or {}).items() if r["status"] != "success")
            rows.append({
                "execution_date": str(data.get("execution_date") or when.date()),
                "state": state.type.value, "flow_run_id": str(state.state_details.flow_run_id),
                "full_refresh": first, "failed": failed,
                "message": None if state.is_completed() else state.message,
            })
            if not state.is_completed():
                break
        planned = 1 if set(models) <= at_once else len(dates)  # microbatch only: one invocation does it all
        summary = {"pipeline": pipeline, "models": models, "dates": rows, "planned_dates": planned,
                   "microbatch_at_once": sorted(at_once)}
        ctx = FlowRunContext.get()
        if ctx and ctx.flow_run:  # where `run_flow_quietly` finds a summary Prefect kept as a result record
            _write_json(settings.data_dir / "runs" / str(ctx.flow_run.id) / "summary.json", summary)
        if rows[-1]["state"] == "COMPLETED" and len(rows) == planned:
            return Completed(message=f"rebuilt {', '.join(models)} over {len(dates)} dates", data=summary)
        if interrupted():
            return Cancelled(message=f"{INTERRUPTED} at {rows[-1]['execution_date']}", data=summary)
        return Failed(message=f"rebuild stopped at {rows[-1]['execution_date']}: {rows[-1]['message']}", data=summary)


def microbatch_at_once(resolved: Any, models: list[str], logger: Any) -> set[str]:
    """The rebuilt microbatch models that can run all their batches in the first date's invocation:
    none when a rebuilt model that is not microbatch feeds one (its dates must come first)."""
    micro = set(models) & resolved.microbatch_blocks
    feeding = sorted(m for m in models if m not in micro and resolved.downstream_of({m}) & micro)
    if micro and feeding:
        logger.info("microbatch models %s run date by date: %s (rebuilt date by date) feeds them",
                    ", ".join(sorted(micro)), ", ".join(feeding))
        return set()
    return micro


def rebuild_window_end(resolved: Any, last: datetime) -> datetime:
    """The end of the last date's interval: where the microbatch window of a rebuild stops."""
    return interval_for(last, resolved.spec.interval, resolved.spec.timezone).end


def _state_data(state: Any) -> dict:
    """A child flow run's summary dict, whether Prefect kept it in memory or as a result record."""
    data = state.data
    data = getattr(data, "result", data)
    return data if isinstance(data, dict) else {}


def _write_json(path, payload: dict) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))


def _project_run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return f"full-refresh-{p.get('dbt_project')}"


@flow(name=DBT_PROJECT_REFRESH_FLOW, flow_run_name=_project_run_name, validate_parameters=True,
      persist_result=False)
def dbt_project_refresh_flow(
    dbt_project: str,
    select: list[str],
    downstream: bool = False,
    include_snapshots: bool = False,
    execution_date: datetime | None = None,
    target: str | None = None,
    vars: dict[str, Any] | None = None,
):
    """Rebuild the selected incremental models of a dbt project with --full-refresh (and nothing else).

    Args:
        dbt_project: The dbt project (its folder under dbt_projects/).
        select: dbt selectors; only the incremental models they match are rebuilt.
        downstream: Also run the models downstream of them (without --full-refresh).
        include_snapshots: Also rebuild the snapshots the selectors match (their history is lost).
        execution_date: The date the models are built for; empty means the run's scheduled time.
        target: The dbt target from profiles.yml; empty means the profile's default.
        vars: Extra dbt vars.
    """
    with flow_run_heartbeats(), hold_run_lock(load_settings().data_dir, current_flow_run_id()):  # run_liveness
        from mage_dbt.refresh.drift import enforce_on_drift

        logger = get_run_logger()
        ctx = FlowRunContext.get()
        run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else "local"
        settings = load_settings()
        resolved, _ = resolve_refresh_target(settings, dbt_project, target)
        plan = plan_full_refresh(resolved, select, downstream=downstream, include_snapshots=include_snapshots)
        resolved = restrict(resolved, set(plan.blocks))
        context = make_context(
            resolved.name, execution_date or scheduled_time(), interval=resolved.spec.interval,
            timezone=resolved.spec.timezone, full_refresh=True, vars=vars, target=target, run_id=run_id,
        )
        refresh = {resolved.blocks[n].unique_id for n in plan.refresh}
        from contextlib import ExitStack

        from mage_dbt.runs.concurrency import holding_slots, run_slots

        with ExitStack() as held:
            try:  # the DuckDB file's / target's concurrency slots, as a pipeline run takes them
                held.enter_context(holding_slots(run_slots(settings, resolved, context), logger,
                                                 data_dir=settings.data_dir,
                                                 flow_run_id=None if run_id == "local" else run_id))
                refresh = enforce_on_drift(resolved, context, refresh, logger)
            except MageDbtError as exc:
                return Failed(message=exc.one_line(), data=exc)
            logger.info("dbt project %s: full refresh of %s", dbt_project, ", ".join(plan.refresh))
            return run_and_report(settings, resolved, context, logger, full_refresh_nodes=refresh)
