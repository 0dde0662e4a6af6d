"""`mage-dbt full-refresh`, `status` and `rebuild`: rebuild incremental models safely, see when to.

Every check happens before a flow run starts (unknown pipeline or project, a selector matching no
incremental model, a bad date range); user mistakes print one line and exit 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mage_dbt.blocks.outputs import check_data_dir
from mage_dbt.cli.console import console, err_console
from mage_dbt.cli.live_progress import block_progress
from mage_dbt.cli.options import ProjectDir, Target, parse_vars, settings_for
from mage_dbt.cli.typer_app import app
from mage_dbt.dates import parse_execution_date

STATE_STYLE = {"up to date": "green", "drifted": "bold red", "not built": "yellow", "unknown": "magenta",
               "COMPLETED": "green", "FAILED": "bold red"}
Select = typer.Option(..., "--select", "-s", help="dbt selector or block name (repeatable); only incremental models it matches are rebuilt.")
Var = typer.Option(None, "--var", help="Extra dbt var KEY=VALUE (repeatable).")


@app.command("full-refresh")
def full_refresh(
    name: str = typer.Argument(..., help="Pipeline (flows/<name>.yaml) or dbt project (dbt_projects/<name>)."),
    select: list[str] = Select,
    downstream: bool = typer.Option(False, "--downstream", help="Also run the models downstream of them (no full refresh)."),
    include_snapshots: bool = typer.Option(False, "--include-snapshots", help="Also rebuild matching snapshots: their history is lost."),
    execution_date: Optional[str] = typer.Option(
        None, "--execution-date", "-d",
        help="YYYY-MM-DD or ISO timestamp the models are rebuilt for; required when they read "
        "var('execution_date') (default for the others: now)."),
    target: Optional[str] = Target,
    var: Optional[list[str]] = Var,
    project_dir: Optional[Path] = ProjectDir,
) -> int:
    """Rebuild ONLY the selected incremental models from scratch (dbt --full-refresh), as a Prefect flow run."""
    from mage_dbt.cli.run_cmds import finish_run
    from mage_dbt.refresh.full_refresh import describe_plan, plan_full_refresh, resolve_refresh_target
    from mage_dbt.runs.prefect_setup import run_flow_quietly

    settings = settings_for(project_dir)
    check_data_dir(settings.data_dir)
    resolved, is_pipeline = resolve_refresh_target(settings, name, target)
    plan = plan_full_refresh(resolved, select, downstream=downstream, include_snapshots=include_snapshots)
    when = parse_execution_date(execution_date, resolved.spec.timezone) if execution_date else None
    if when is None:  # a dateless refresh of date-filtered models would empty them (mage_dbt.refresh.date_reads)
        from mage_dbt.refresh.date_reads import require_refresh_date

        require_refresh_date(resolved, name, plan.refresh, plan.downstream, is_pipeline=is_pipeline)
    variables = parse_vars(var) or None
    _check_target_opens(resolved)
    console.print(describe_plan(plan))
    with block_progress(err_console, f"preparing the full refresh of {', '.join(plan.refresh)}"):
        if is_pipeline:
            from mage_dbt.flows import pipeline_flow

            summary = run_flow_quietly(
                pipeline_flow, pipeline=name, execution_date=when, full_refresh=True, select=plan.blocks,
                full_refresh_select=list(plan.refresh), target=target, vars=variables,
            )
        else:
            from mage_dbt.refresh.rebuild import dbt_project_refresh_flow

            summary = run_flow_quietly(
                dbt_project_refresh_flow, dbt_project=name, select=list(select), downstream=downstream,
                include_snapshots=include_snapshots, execution_date=when, target=target, vars=variables,
            )
    return finish_run(summary)


def _check_target_opens(resolved) -> None:
    """A DuckDB file another run holds, or in a read-only folder, is refused here, before a flow run exists."""
    from mage_dbt.warehouse.catalog import check_target_opens

    if resolved.dbt_ref is not None:
        check_target_opens(resolved.dbt_ref)


@app.command()
def status(
    pipeline: str = typer.Argument(..., help="Pipeline name: flows/<name>.yaml"),
    execution_date: Optional[str] = typer.Option(None, "--execution-date", "-d", help="Date the models compile for (default: now)."),
    target: Optional[str] = Target,
    project_dir: Optional[Path] = ProjectDir,
) -> int:
    """Show each incremental model of PIPELINE: up to date, drifted (which columns) or not built."""
    from datetime import datetime, timezone

    from mage_dbt.context import make_context
    from mage_dbt.pipelines.pipeline import load_pipeline
    from mage_dbt.refresh.drift import detect_drift

    from mage_dbt.pipelines.spec import load_pipeline_spec

    settings = settings_for(project_dir)
    spec = load_pipeline_spec(settings.flows_dir, pipeline)
    when = parse_execution_date(execution_date, spec.timezone) if execution_date else datetime.now(timezone.utc)
    context = make_context(spec.name, when, interval=spec.interval, timezone=spec.timezone,
                           vars=spec.vars, target=target or spec.target)
    resolved = load_pipeline(settings, pipeline, target=target, dbt_vars=context.dbt_vars())
    states = detect_drift(resolved, context)
    if not states:
        console.print(f"pipeline {resolved.name} has no incremental models")
        return 0
    table = Table(title=f"{resolved.name}: incremental models (on_drift: {spec.on_drift})", title_justify="left")
    for column in ("model", "relation", "status", "changes"):
        table.add_column(column, overflow="fold")
    for state in states:
        style = STATE_STYLE.get(state.status, "")
        table.add_row(state.block, state.relation.replace('"', ""), f"[{style}]{state.status}[/]", state.describe())
    console.print(table)
    drifted = [s.block for s in states if s.status == "drifted"]
    if drifted:
        from mage_dbt.refresh.drift import fix_command

        console.print(f"rebuild: {fix_command(resolved, drifted, context.date_vars()['execution_date'])}")
    return 0


@app.command()
def rebuild(
    pipeline: str = typer.Argument(..., help="Pipeline name: flows/<name>.yaml"),
    select: list[str] = Select,
    start: str = typer.Option(..., "--start", help="First date: the models are rebuilt from scratch for it."),
    end: str = typer.Option(..., "--end", help="Last date, inclusive: every date in between runs in order."),
    target: Optional[str] = Target,
    var: Optional[list[str]] = Var,
    project_dir: Optional[Path] = ProjectDir,
) -> int:
    """Full-refresh the selected incremental models for --start, then run them for each date to --end."""
    from mage_dbt.pipelines.pipeline import load_pipeline
    from mage_dbt.refresh.full_refresh import plan_full_refresh
    from mage_dbt.refresh.rebuild import rebuild_dates, rebuild_flow
    from mage_dbt.runs.prefect_setup import run_flow_quietly

    settings = settings_for(project_dir)
    check_data_dir(settings.data_dir)
    resolved = load_pipeline(settings, pipeline, target=target)
    plan = plan_full_refresh(resolved, select, snapshots_option=False)  # rebuild takes no --include-snapshots
    dates = rebuild_dates(settings, pipeline, start, end, target)
    _check_target_opens(resolved)
    microbatch = sorted(set(plan.refresh) & resolved.microbatch_blocks)
    console.print(f"rebuild of {', '.join(plan.refresh)}: full refresh for {dates[0].date()}, "
                  f"then {len(dates) - 1} more date(s) in order" + (
                      f" (microbatch {', '.join(microbatch)}: every batch of the range in the first date's "
                      "dbt invocation)" if microbatch else ""))
    with block_progress(err_console, f"preparing the rebuild of {', '.join(plan.refresh)}"):
        summary = run_flow_quietly(
            rebuild_flow, pipeline=pipeline, select=list(plan.refresh), start=dates[0], end=dates[-1],
            target=target, vars=parse_vars(var) or None,
        )
    table = Table(title=f"rebuild {pipeline}: {', '.join(summary['models'])}", title_justify="left")
    for column in ("execution date", "full refresh", "state", "flow run", "failed"):
        table.add_column(column, overflow="fold")
    for row in summary["dates"]:
        style = STATE_STYLE.get(row["state"], "")
        table.add_row(row["execution_date"], "yes" if row["full_refresh"] else "", f"[{style}]{row['state']}[/]",
                      row["flow_run_id"], ", ".join(row["failed"]) or (row["message"] or "")[:200])
    console.print(table)
    done = sum(1 for r in summary["dates"] if r["state"] == "COMPLETED")
    console.print(f"{done} of {summary['planned_dates']} dates completed")
    console.print(f"flow run: {summary['flow_run_id']}")
    if summary.get("state") == "CANCELLED":
        from mage_dbt.runs.interrupts import EXIT_CODE

        err_console.print(f"interrupted — the dates from {summary['dates'][-1]['execution_date']} on did not run: "
                          "run the same rebuild again", highlight=False, soft_wrap=True)
        return EXIT_CODE
    return 0 if done == summary["planned_dates"] else 1
