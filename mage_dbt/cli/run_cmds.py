"""`mage-dbt run`: run a pipeline for one execution date as a Prefect flow, then print a summary."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from mage_dbt.blocks.outputs import check_data_dir
from mage_dbt.cli.console import console, err_console
from mage_dbt.cli.live_progress import block_progress
from mage_dbt.cli.tables import print_run_recap, print_run_table
from mage_dbt.cli.options import ProjectDir, Target, connect_prefect, parse_vars, project_settings
from mage_dbt.cli.typer_app import app
from mage_dbt.dates import parse_execution_date
from mage_dbt.dbt.executor_choice import check_executor, resolve_executor, target_adapter
from mage_dbt.pipelines.pipeline import load_pipeline
from mage_dbt.pipelines.spec import load_pipeline_spec

@app.command()
def run(
    pipeline: str = typer.Argument(..., help="Pipeline name: flows/<name>.yaml"),
    execution_date: str = typer.Option(..., "--execution-date", "-d", help="YYYY-MM-DD or ISO timestamp."),
    target: Optional[str] = Target,
    full_refresh: bool = typer.Option(False, "--full-refresh", help="Rebuild incremental models from scratch."),
    select: Optional[list[str]] = typer.Option(None, "--select", "-s", help="Run only these blocks (dbt selector syntax or block names)."),
    var: Optional[list[str]] = typer.Option(None, "--var", help="Extra dbt var KEY=VALUE (repeatable)."),
    ref: Optional[str] = typer.Option(None, "--ref", help="Run once against this branch, tag or commit of the "
                                      "git-synced dbt project; the current revision stays as it is."),
    reuse: Optional[bool] = typer.Option(None, "--reuse/--no-reuse", help="Skip dbt nodes unchanged since their "
                                         "last successful build on this target (default: the pipeline's reuse: setting)."),
    changed: bool = typer.Option(False, "--changed", help="Only the dbt nodes modified since the last successful "
                                 "run on the state target, and their downstream (state:modified+), deferring to "
                                 "that run's relations for parents not built."),
    state_target: Optional[str] = typer.Option(None, "--state-target", help="With --changed: the target whose last "
                                               "successful run is the state (default: --target)."),
    project_dir: Optional[Path] = ProjectDir,
) -> int:
    """Run PIPELINE for one execution date (a Prefect flow run with one task run per block)."""
    settings = project_settings(project_dir)
    worker = starts_dbt_worker(settings, pipeline, target)
    if worker:
        start_dbt_worker()
    connect_prefect()
    check_data_dir(settings.data_dir)  # a read-only or full data folder stops here, before any flow run
    spec = load_pipeline_spec(settings.flows_dir, pipeline)
    when = parse_execution_date(execution_date, spec.timezone)
    with block_progress(err_console, f"preparing {pipeline} for {execution_date}: dbt project, Prefect flow run"):
        summary = _run(settings, spec, pipeline, when, full_refresh=full_refresh, select=select,
                       target=target, var=var, ref=ref, reuse=reuse, changed=changed, state_target=state_target,
                       preload=worker)
    return finish_run(summary)


def start_dbt_worker() -> None:
    """Start the dbt worker first thing (its dbt import overlaps with ours of Prefect,
    mage_dbt.dbt.worker_executor); the flow's runner uses it too, also when `auto` chose it."""
    from mage_dbt.dbt.worker_executor import prestart_worker
    from mage_dbt.settings import DBT_EXECUTOR_ENV

    os.environ[DBT_EXECUTOR_ENV] = "worker"
    prestart_worker()


def starts_dbt_worker(settings, pipeline: str, target: str | None) -> bool:
    """Whether a `mage-dbt run`/`backfill` of `pipeline` uses the dbt worker; decided before dbt is
    imported, so the worker can start first thing. A spec that cannot be read says no (the command
    reports it next)."""
    from mage_dbt.errors import MageDbtError
    from mage_dbt.pipelines.spec import dbt_project_ref

    check_executor(settings.dbt_executor)
    if settings.dbt_executor in ("in_process", "json_log"):
        return False
    try:
        spec = load_pipeline_spec(settings.flows_dir, pipeline)
    except MageDbtError:
        return False
    if spec.dbt is None:
        return False
    ref = dbt_project_ref(settings, spec, target)
    adapter = target_adapter(ref.profiles_dir, ref.project_dir, ref.target)
    return resolve_executor(settings.dbt_executor, adapter, warn=False) == "worker"


def _run(settings, spec, pipeline, when, *, full_refresh, select, target, var, ref, reuse=None, changed=False,
         state_target=None, preload=False) -> dict:
    # Pre-flight outside the flow: a bad target, selector or project fails here, before any run exists.
    # sync_on_run / --ref first bring the dbt project revision the flow will use (mage_dbt.runs.project_sync).
    from mage_dbt.cli.sync_cmds import ConsoleLog
    from mage_dbt.runs.project_sync import prepare_run_project

    project = prepare_run_project(settings, pipeline, ref=ref, target=target, log=ConsoleLog())
    from mage_dbt.context import run_dbt_vars

    resolved = load_pipeline(settings, pipeline, target=target, select=select, dbt_ref=project.dbt_ref,
                             dbt_vars=run_dbt_vars(spec, when, parse_vars(var)))
    if preload and resolved.manifest is not None:  # the dbt worker loads it while we create the flow run
        from mage_dbt.dbt.worker_executor import preload_worker

        preload_worker(resolved.manifest)
    from mage_dbt.runs.pipeline_run import check_before_flow_run

    if state_target and not changed:
        from mage_dbt.errors import ConfigError

        raise ConfigError("--state-target only applies with --changed", hint="add --changed or drop --state-target")
    if changed:  # no state to compare with: one line here, before any flow run
        from mage_dbt.runs.slim import state_manifest_dir

        state_manifest_dir(settings, resolved, state_target)

    # The flow's own refusals (DuckDB file held by another run or read-only, on_drift: fail), made here.
    check_before_flow_run(spec, resolved, when, full_refresh=full_refresh, vars=parse_vars(var) or None,
                          target=target)
    from mage_dbt.flows import pipeline_flow
    from mage_dbt.runs.prefect_setup import run_flow_quietly

    return run_flow_quietly(
        pipeline_flow,
        pipeline=pipeline, execution_date=when, full_refresh=full_refresh,
        select=select, target=target, vars=parse_vars(var) or None, ref=ref, reuse=reuse,
        changed=changed, state_target=state_target,
    )


def finish_run(summary: dict) -> int:
    """Print a run's summary; the exit code: 0 all succeeded, 1 a block failed, 130 interrupted."""
    from mage_dbt.runs.interrupts import EXIT_CODE, interrupted

    print_summary(summary)
    if summary.get("interrupted") or summary.get("state") == "CANCELLED" or interrupted():
        err_console.print(interrupted_line(summary.get("flow_run_id")), highlight=False, soft_wrap=True)
        return EXIT_CODE
    failed = [n for n, r in summary["results"].items() if r["status"] != "success"]
    return 1 if failed else 0


def interrupted_line(flow_run_id: str | None) -> str:
    if not flow_run_id:
        return "interrupted"
    return f"interrupted — re-run what did not finish with: mage-dbt retry --run {flow_run_id}"


def print_summary(summary: dict) -> None:
    """The run's table (sized to the terminal), a recap of what did not succeed, then the counts."""
    print_run_table(console, summary)
    print_run_recap(console, summary)
    counts = {}
    for result in summary["results"].values():
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    reused = sum(1 for r in summary["results"].values() if r.get("reused"))
    if reused:
        parts += f" ({reused} reused: unchanged since their last build, not run)"
    console.print(f"{len(summary['results'])} blocks: {parts}; dbt invocations: {summary.get('dbt_invocations', 0)}")
    compiled = sorted(n for n, status in (summary.get("ephemeral") or {}).items() if status == "success")
    if compiled:
        console.print(f"ephemeral models, compiled into the models that ref them (not run): {', '.join(compiled)}")
    if summary.get("flow_run_id"):
        console.print(f"flow run: {summary['flow_run_id']}")
