"""One pipeline run for one execution date: the body of the pipeline flow (`mage_dbt.flows`).

`run_pipeline` takes the flow's typed parameters and does the run inside the current flow run: the
revision of the dbt project (sync on run, `ref`), the run context, the resolved pipeline, drift
and targeted full refresh, the outputs a retry reads from the runs it retries, then
`run_and_report`: task runs per block, the summary file and log lines, the flow run's final state.
When no execution date is given (a scheduled run), the run's *scheduled* start time is used, never
the wall clock, so a run that starts late still processes its own date.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from prefect import get_run_logger
from prefect.context import FlowRunContext
from prefect.states import Cancelled, Completed, Failed

from mage_dbt.blocks.outputs import OutputStore
from mage_dbt.context import make_context
from mage_dbt.errors import MageDbtError
from mage_dbt.pipelines.pipeline import for_dbt_vars, load_pipeline
from mage_dbt.pipelines.spec import load_pipeline_spec
from mage_dbt.refresh.drift import plan_run_refresh
from mage_dbt.dbt.pruning import prune_run_records
from mage_dbt.runs.concurrency import holding_slots, run_slots, tagged_slots
from mage_dbt.runs.block_progress import current_block_sink, with_block_progress
from mage_dbt.runs.heartbeats import flow_run_heartbeats
from mage_dbt.runs.history import RETRY_TAG
from mage_dbt.runs.project_sync import prepare_run_project, record_commit
from mage_dbt.runs.microbatch_checks import check_event_time_window, warn_unfiltered_upstreams
from mage_dbt.runs.assets import asset_events, finish_assets
from mage_dbt.runs.run_artifacts import publish_run_summary
from mage_dbt.runs.run_guard import INTERRUPTED, guarded
from mage_dbt.runs.runner import PipelineRunner, RunSummary
from mage_dbt.runs.slim import changed_only
from mage_dbt.runs.task_runs import TaskRunReporter
from mage_dbt.settings import ProjectSettings, load_settings


def scheduled_time() -> datetime:
    """The flow run's scheduled start (manual runs: when they were created)."""
    ctx = FlowRunContext.get()
    if ctx and ctx.flow_run and ctx.flow_run.expected_start_time:
        return ctx.flow_run.expected_start_time
    return datetime.now(timezone.utc)


def run_pipeline(
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
    """The pipeline flow's run (parameters: see `mage_dbt.flows.pipeline_flow`); its final state."""
    settings = load_settings()
    return guarded(settings.data_dir, lambda: _run_pipeline(  # process lock; Ctrl-C -> Cancelled
        settings, pipeline, execution_date, full_refresh, select, target, vars, ref, full_refresh_select,
        check_drift, event_time_end, reuse, changed, state_target))


def _run_pipeline(settings, pipeline, execution_date, full_refresh, select, target, vars, ref,
                  full_refresh_select, check_drift, event_time_end=None, reuse=None, changed=False,
                  state_target=None):
    with flow_run_heartbeats():  # Prefect's own are off when run in-process (heartbeats.py)
        logger = get_run_logger()
        ctx = FlowRunContext.get()
        run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else "local"
        project = prepare_run_project(settings, pipeline, ref=ref, target=target, log=logger)  # sync_on_run / ref
        spec = load_pipeline_spec(settings.flows_dir, pipeline)
        context = run_context(spec, execution_date or scheduled_time(), full_refresh, vars, target, run_id,
                              event_time_end)
        # dbt parses with the run's vars (dates included): vars can change which nodes exist.
        resolved = load_pipeline(settings, pipeline, target=target, select=select, dbt_ref=project.dbt_ref,
                                 dbt_vars=context.dbt_vars())
        dbt_commit = record_commit(resolved, project, log=logger)  # log line + dbt-commit:<sha12> tag
        context = replace(context, dbt_commit=dbt_commit)
        if changed:  # a slim run: state:modified+ against the last successful run, deferring (runs/slim.py)
            try:
                resolved, context = changed_only(settings, resolved, context, state_target)
            except MageDbtError as exc:
                return Failed(message=exc.one_line(), data=exc)
            logger.info("--changed: %d block(s) modified since the last successful run, or downstream of one",
                        len(resolved.blocks))
        logger.info(
            "pipeline %s, execution date %s, %d blocks in %d units%s",
            resolved.name, context.date_vars()["execution_date"], len(resolved.blocks), len(resolved.units),
            ", full refresh" if full_refresh else "",
        )
        warn_unfiltered_upstreams(resolved, logger)
        max_wait = spec.concurrency.max_wait_seconds if spec.concurrency else None
        with ExitStack() as held:
            try:  # the run's concurrency slots (runs/concurrency.py), taken before the warehouse is touched
                check_event_time_window(resolved, context.event_time)
                run_tags = ctx.flow_run.tags if ctx and ctx.flow_run else ()
                slots = run_slots(settings, resolved, context) + tagged_slots(run_tags)
                held.enter_context(holding_slots(slots, logger, max_wait=max_wait, data_dir=settings.data_dir,
                                                 flow_run_id=None if run_id == "local" else run_id))
                refresh_nodes = plan_run_refresh(resolved, context, full_refresh_select, check_drift=check_drift,
                                                 logger=logger)
            except MageDbtError as exc:  # no slot in time, drift with on_drift: fail, a bad full_refresh_select
                return Failed(message=exc.one_line(), data=exc)  # returned, not raised: no traceback on the CLI
            retry = retry_outputs(settings, resolved.name, run_id, run_tags)
            context = replace(context, retry_batches=failed_batches_of(settings, run_tags))
            reuse = spec.reuse if reuse is None else reuse  # the run's option wins over the pipeline's setting
            return run_and_report(settings, resolved, context, logger, full_refresh_nodes=refresh_nodes,
                                  reuse=bool(reuse), **retry)


def run_context(spec, when: datetime, full_refresh: bool, vars: dict[str, Any] | None, target: str | None,
                run_id: str, event_time_end: datetime | None = None):
    """The run context every block of this run sees (the pipeline file's vars, then the run's)."""
    return make_context(spec.name, when, interval=spec.interval, timezone=spec.timezone, full_refresh=full_refresh,
                        vars={**spec.vars, **(vars or {})}, target=target or spec.target, run_id=run_id,
                        event_time=spec.dbt.event_time_window if spec.dbt else "run_interval",
                        event_time_end=event_time_end)


class _Silent:
    """A logger for the pre-flight: the flow logs the same lines again, to Prefect."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def check_before_flow_run(spec, resolved, when: datetime, *, full_refresh: bool = False,
                          vars: dict[str, Any] | None = None, target: str | None = None,
                          full_refresh_select: list[str] | None = None, check_drift: bool = True) -> None:
    """What the flow body would refuse before any block runs, checked before a flow run exists (the
    CLI): the target's DuckDB file opens (its folder writable; not held by another process, unless a
    run holds its concurrency slot: then this run waits for the slot), and the
    full refresh and on_drift plan stands. Raises the MageDbtError the flow run would end Failed with."""
    from mage_dbt.runs.concurrency import held_by_a_run
    from mage_dbt.warehouse.catalog import check_target_opens, target_config

    # A file held by a run with its DuckDB slot: the flow run waits for the slot, then checks drift itself.
    held = resolved.dbt_ref is not None and held_by_a_run(target_config(resolved.dbt_ref))
    if resolved.dbt_ref is not None and not held:
        check_target_opens(resolved.dbt_ref)
    context = run_context(spec, when, full_refresh, vars, target, run_id="preflight")
    check_event_time_window(resolved, context.event_time)
    if not held:  # the drift check reads the file
        plan_run_refresh(resolved, context, full_refresh_select, check_drift=check_drift, logger=_Silent())


def retry_outputs(settings: ProjectSettings, pipeline: str, run_id: str, tags: Any) -> dict[str, Any]:
    """PipelineRunner options for a run tagged retry-of:<id>: block outputs it does not produce
    itself (its upstream blocks succeeded before) are read from the runs it retries."""
    retried = [t[len(RETRY_TAG):] for t in (tags or ()) if t.startswith(RETRY_TAG)]
    if not retried:
        return {}
    return {"outputs": OutputStore(settings.data_dir, pipeline, run_id, fallback_run_ids=retried)}


def failed_batches_of(settings: ProjectSettings, tags: Any) -> dict[str, tuple[tuple[str, str], ...]]:
    """A retry's microbatch batches to re-run: the failed batches of the run it retries (its
    summary.json), by model id; models whose batches all succeeded or never ran are not listed."""
    retried = [t[len(RETRY_TAG):] for t in (tags or ()) if t.startswith(RETRY_TAG)]
    path = settings.data_dir / "runs" / retried[0] / "summary.json" if retried else None
    if path is None or not path.is_file():
        return {}
    results = json.loads(path.read_text()).get("results", {})
    return {r["unique_id"]: tuple(tuple(w) for w in r["failed_batches"])
            for r in results.values() if r.get("unique_id") and r.get("failed_batches")}


def run_and_report(settings, resolved, context, logger, **runner_options):
    """Run a resolved pipeline inside the current flow run: task runs per block, a summary file
    and log lines, and the flow run's final state (Failed, with the summary, when a block failed)."""
    ctx = FlowRunContext.get()
    resolved = for_dbt_vars(resolved, context.dbt_vars())  # resolved before the run's vars were known
    task_runs = reporter = TaskRunReporter(context.run_id) if ctx and ctx.flow_run else None
    assets = []
    # The CLI's live display (mage_dbt.runs.block_progress); unchanged when nothing listens.
    label = f"{resolved.name} {context.date_vars()['execution_date']}"
    reporter = with_block_progress(reporter, label, sum(1 for b in resolved.blocks.values() if not b.is_ephemeral))
    try:
        runner = PipelineRunner(settings, resolved, context, reporter=reporter, **runner_options)
        events = None if task_runs is None else asset_events(
            settings, resolved, runner.summary, context, task_runs.task_run_ids, logger)
        if events is not None:  # each block's asset events go out as its task run ends (runs/assets.py)
            task_runs.after_final = events.block_ended
        summary = runner.run()
        assets = finish_assets(events, logger)  # queued before close(), which sends every event
    finally:
        if reporter:
            reporter.close()
        current_block_sink().run_ended(label)
    _write_summary(settings, context.run_id, summary)
    if ctx and ctx.flow_run:  # the summary as the run page's artifact (runs/run_artifacts.py)
        publish_run_summary(summary, resolved, context.run_id, logger, assets=assets)
    # One log record for the whole table: one row per block would be hundreds of log rows to store.
    logger.info("%d blocks:\n%s", len(summary.results), "\n".join(summary_lines(summary)))
    if summary.interrupted:
        cancelled = summary.names("cancelled")
        return Cancelled(message=f"{INTERRUPTED}: {len(cancelled)} block(s) cancelled, "
                         f"{len(summary.names('success'))} succeeded", data=summary.to_dict())
    if summary.ok:
        reused = sum(1 for r in summary.results.values() if r.reused)
        return Completed(message=f"{len(summary.results)} blocks succeeded" + (f" ({reused} reused)" if reused else ""),
                         data=summary.to_dict())
    failed = summary.names("failed")
    return Failed(
        message=f"{len(failed)} block(s) failed: {', '.join(failed[:10])}; "
        f"{len(summary.names('skipped'))} skipped{first_errors(summary, failed)}",
        data=summary.to_dict(),
    )


def first_errors(summary: RunSummary, failed: list[str], most: int = 5) -> str:
    """` — block: first error line; ...` for the state message (alerts quote it: deploy/alerts.py)."""
    from mage_dbt.warehouse.profile import first_line

    parts = [f"{name}: {first_line(summary.results[name].message or '')[:200]}" for name in failed[:most]]
    return f" — {'; '.join(parts)}" if parts else ""


def _write_summary(settings, run_id: str, summary: RunSummary) -> None:
    folder = settings.data_dir / "runs" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    prune_run_records(folder.parent, current=run_id)  # the newest run records only


def summary_lines(summary: RunSummary) -> list[str]:
    lines = []
    for result in summary.results.values():
        line = f"{result.status:<8} {result.kind:<12} {result.name} ({result.seconds:.2f}s)"
        if result.status != "success" and result.message:
            line += f": {result.message}"
        lines.append(line)
    return lines
