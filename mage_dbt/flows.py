"""The Prefect flow that runs one pipeline for one execution date.

Parameters are first-class and typed (the Prefect UI renders them as a form and rejects wrong
types before anything runs): pipeline, execution_date, full_refresh, select, target, vars. When
no execution date is given (a scheduled run), the run's *scheduled* start time is used, never the
wall clock, so a run that starts late still processes its own date.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.states import Completed, Failed

from mage_dbt.block_progress import current_block_sink, with_block_progress
from mage_dbt.context import make_context
from mage_dbt.heartbeats import flow_run_heartbeats
from mage_dbt.pipeline import for_dbt_vars, load_pipeline
from mage_dbt.pipeline_spec import load_pipeline_spec
from mage_dbt.retry import retry_outputs
from mage_dbt.runner import PipelineRunner, RunSummary
from mage_dbt.settings import load_settings
from mage_dbt.task_runs import TaskRunReporter

FLOW_NAME = "mage-dbt-pipeline"


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    when = params.get("execution_date") or flow_run.scheduled_start_time
    if isinstance(when, datetime):
        when = when.date().isoformat() if when.time() == datetime.min.time() else when.isoformat()
    return f"{params.get('pipeline', 'pipeline')}-{str(when)[:19]}"


def scheduled_time() -> datetime:
    """The flow run's scheduled start (manual runs: when they were created)."""
    ctx = FlowRunContext.get()
    if ctx and ctx.flow_run and ctx.flow_run.expected_start_time:
        return ctx.flow_run.expected_start_time
    return datetime.now(timezone.utc)


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
    """
    with flow_run_heartbeats():  # Prefect's own are off when run in-process (heartbeats.py)
        logger = get_run_logger()
        ctx = FlowRunContext.get()
        run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else "local"
        settings = load_settings()
        from mage_dbt.sync_flow import prepare_run_project, record_commit

        project = prepare_run_project(settings, pipeline, ref=ref, target=target, log=logger)  # sync_on_run / ref
        spec = load_pipeline_spec(settings.flows_dir, pipeline)
        context = make_context(
            spec.name,
            execution_date or scheduled_time(),
            interval=spec.interval,
            timezone=spec.timezone,
            full_refresh=full_refresh,
            vars={**spec.vars, **(vars or {})},
            target=target or spec.target,
            run_id=run_id,
        )
        # dbt parses with the run's vars (dates included): vars can change which nodes exist.
        resolved = load_pipeline(settings, pipeline, target=target, select=select, dbt_ref=project.dbt_ref,
                                 dbt_vars=context.dbt_vars())
        dbt_commit = record_commit(resolved, project, log=logger)  # log line + dbt-commit:<sha12> tag
        context = replace(context, dbt_commit=dbt_commit)
        logger.info(
            "pipeline %s, execution date %s, %d blocks in %d units%s",
            resolved.name, context.date_vars()["execution_date"], len(resolved.blocks), len(resolved.units),
            ", full refresh" if full_refresh else "",
        )
        from mage_dbt.drift import plan_run_refresh
        from mage_dbt.errors import MageDbtError

        try:
            refresh_nodes = plan_run_refresh(resolved, context, full_refresh_select, check_drift=check_drift, logger=logger)
        except MageDbtError as exc:  # drift with on_drift: fail, or a bad full_refresh_select: nothing ran
            return Failed(message=exc.one_line(), data=exc)  # returned, not raised: no traceback on the CLI
        retry = retry_outputs(settings, resolved.name, run_id, ctx.flow_run.tags if ctx and ctx.flow_run else ())
        return run_and_report(settings, resolved, context, logger, full_refresh_nodes=refresh_nodes, **retry)


def run_and_report(settings, resolved, context, logger, **runner_options):
    """Run a resolved pipeline inside the current flow run: task runs per block, a summary file
    and log lines, and the flow run's final state (Failed, with the summary, when a block failed)."""
    ctx = FlowRunContext.get()
    resolved = for_dbt_vars(resolved, context.dbt_vars())  # resolved before the run's vars were known
    reporter = TaskRunReporter(context.run_id) if ctx and ctx.flow_run else None
    # The CLI's live display (mage_dbt.block_progress); unchanged when nothing listens.
    label = f"{resolved.name} {context.date_vars()['execution_date']}"
    reporter = with_block_progress(reporter, label, sum(1 for b in resolved.blocks.values() if not b.is_ephemeral))
    try:
        summary = PipelineRunner(settings, resolved, context, reporter=reporter, **runner_options).run()
    finally:
        if reporter:
            reporter.close()
        current_block_sink().run_ended(label)
    _write_summary(settings, context.run_id, summary)
    # One log record for the whole table: one row per block would be hundreds of log rows to store.
    logger.info("%d blocks:\n%s", len(summary.results), "\n".join(summary_lines(summary)))
    if summary.ok:
        return Completed(message=f"{len(summary.results)} blocks succeeded", data=summary.to_dict())
    failed = summary.names("failed")
    return Failed(
        message=f"{len(failed)} block(s) failed: {', '.join(failed[:10])}; "
        f"{len(summary.names('skipped'))} skipped",
        data=summary.to_dict(),
    )


def _write_summary(settings, run_id: str, summary: RunSummary) -> None:
    folder = settings.data_dir / "runs" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    from mage_dbt.pruning import prune_run_records

    prune_run_records(folder.parent, current=run_id)  # the newest run records only


def summary_lines(summary: RunSummary) -> list[str]:
    lines = []
    for result in summary.results.values():
        line = f"{result.status:<8} {result.kind:<12} {result.name} ({result.seconds:.2f}s)"
        if result.status != "success" and result.message:
            line += f": {result.message}"
        lines.append(line)
    return lines
