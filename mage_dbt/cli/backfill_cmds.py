"""`mage-dbt backfill` (run or resume a date-range backfill) and `mage-dbt backfills` (list them).

Every check happens before anything starts: the range (end before start, intervals that do not
divide it, more than the maximum without --yes), the pipeline and selection, concurrency on
DuckDB, and for a resume the backfill id, a live process and pipeline changes. Then the backfill
runs as a Prefect flow in this process with a live progress bar.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mage_dbt.backfill.safety import check_concurrency
from mage_dbt.backfill.plan import (
    CEILING_INTERVALS,
    MAX_INTERVALS_ENV,
    BackfillPlan,
    IntervalWindow,
    check_request,
    check_unchanged,
    interval_key,
    interval_label,
    list_records,
    load_plan,
    make_plan,
    record_path,
    save_plan,
    size_refusal,
)
from mage_dbt.backfill.lock import refuse_overlapping
from mage_dbt.blocks.outputs import check_data_dir
from mage_dbt.cli.console import console, err_console
from mage_dbt.cli.options import ProjectDir, Target, connect_prefect, project_settings, settings_for
from mage_dbt.cli.typer_app import app
from mage_dbt.cli.tables import backfills_table, print_recap, states_cell
from mage_dbt.dates import Interval
from mage_dbt.errors import BackfillError
from mage_dbt.settings import PROJECT_DIR_ENV, ProjectSettings

# A dry run lists every interval up to this many; longer ones show the first and last few.
LIST_ALL_UP_TO = 60
EDGE_ROWS = 5
STATUS_STYLE = {"completed": "green", "failed": "bold red", "crashed": "bold red", "running": "cyan",
                "cancelled": "yellow", "not started": "dim"}


@app.command()
def backfill(
    pipeline: Optional[str] = typer.Argument(None, help="Pipeline name: flows/<name>.yaml (not with --resume)."),
    start: Optional[str] = typer.Option(None, "--start", help="First interval start: YYYY-MM-DD or ISO timestamp."),
    end: Optional[str] = typer.Option(None, "--end", help="LAST interval start, inclusive: 2024-01-01..2024-01-31 daily is 31 runs."),
    interval: Optional[str] = typer.Option(None, "--interval", help="hour, day, week or month (default: the pipeline's interval)."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", "-j", help="Intervals at once, each in its own worker process (not on DuckDB)."),
    select: Optional[list[str]] = typer.Option(None, "--select", "-s", help="Run only these blocks (dbt selector syntax or block names)."),
    full_refresh_first: bool = typer.Option(False, "--full-refresh-first", help="Rebuild incremental models from scratch on the first interval."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the intervals (long ranges: count, first and last) and stop."),
    yes: bool = typer.Option(False, "--yes", "-y", help=f"Allow more intervals than the maximum (up to {CEILING_INTERVALS})."),
    max_intervals: Optional[int] = typer.Option(None, "--max-intervals", envvar=MAX_INTERVALS_ENV, help="Most intervals without --yes (default 366)."),
    keep_going: bool = typer.Option(False, "--keep-going", help="Go on with later intervals after one fails."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Resume backfill ID: run only its intervals that did not complete."),
    force: bool = typer.Option(False, "--force", help="Resume even though the pipeline definition changed."),
    work_pool: Optional[str] = typer.Option(None, "--work-pool", help="Submit the intervals as runs of the pipeline's deployment in this Prefect work pool (workers on any machine run them; -j bounds how many at once)."),
    target: Optional[str] = Target,
    project_dir: Optional[Path] = ProjectDir,
) -> int:
    """Backfill PIPELINE over --start..--end, one Prefect flow run per interval (both ends inclusive)."""
    settings = project_settings(project_dir)
    worker = not dry_run and _starts_worker(settings, pipeline, target, resume, concurrency, work_pool)
    if worker:
        from mage_dbt.cli.run_cmds import start_dbt_worker

        start_dbt_worker()
    connect_prefect()
    if concurrency is not None and concurrency < 1:
        raise BackfillError(f"--concurrency {concurrency} must be at least 1")
    if max_intervals is not None and max_intervals < 1:
        raise BackfillError(f"--max-intervals {max_intervals} must be at least 1")
    if resume:
        conflicting = [flag for flag, value in (
            ("PIPELINE", pipeline), ("--start", start), ("--end", end), ("--interval", interval),
            ("--select", select), ("--full-refresh-first", full_refresh_first), ("--target", target),
            ("--work-pool", work_pool),
        ) if value]
        if conflicting:
            raise BackfillError(
                f"--resume runs the recorded plan of {resume}; it takes no {', '.join(conflicting)}",
                hint=f"use `mage-dbt backfill --resume {resume}` alone (plus --concurrency/--keep-going/--force)",
            )
        plan, todo = _prepare_resume(settings, resume, concurrency=concurrency, force=force)
        if dry_run:
            position = {interval_key(i): n for n, i in enumerate(plan.intervals, start=1)}
            _print_intervals([(position[interval_key(i)], i) for i in todo], len(todo), plan.interval,
                             title=f"backfill {plan.id}: {len(todo)} of {len(plan.intervals)} intervals to run")
            return 0
        if not todo:
            console.print(f"backfill {plan.id}: all {len(plan.intervals)} intervals completed, nothing to run")
            return 0
    else:
        missing = [flag for flag, value in (("PIPELINE", pipeline), ("--start", start), ("--end", end)) if not value]
        if missing:
            raise BackfillError(
                f"backfill needs {', '.join(missing)}",
                hint="e.g. mage-dbt backfill demo --start 2024-01-01 --end 2024-01-31 (or --resume ID)",
            )
        if dry_run:
            return _dry_run(settings, pipeline, start, end, interval=interval, select=select, target=target,
                            concurrency=concurrency or 1, work_pool=work_pool, yes=yes, limit=max_intervals)
        plan, resolved = make_plan(
            settings, pipeline, start, end, interval=interval, select=select, target=target,
            full_refresh_first=full_refresh_first, concurrency=concurrency or 1, yes=yes, limit=max_intervals,
            work_pool=work_pool,
        )
        if worker and resolved.manifest is not None:  # the worker loads it while the backfill flow starts
            from mage_dbt.dbt.worker_executor import preload_worker

            preload_worker(resolved.manifest)
    if plan.work_pool:  # the deployment the intervals are submitted to, in that pool (one line if not)
        from mage_dbt.backfill.pool_runs import pool_deployment

        pool_deployment(plan.pipeline, plan.work_pool)
    check_data_dir(settings.data_dir)  # a read-only or full data folder stops here, before any flow run
    refuse_overlapping(settings, plan)  # another live backfill writing the same microbatch batches
    if not resume:
        save_plan(settings, plan)
    return _run(settings, plan, resume=bool(resume), concurrency=concurrency, force=force, keep_going=keep_going)


def _starts_worker(settings: ProjectSettings, pipeline: str | None, target: str | None, resume: str | None,
                   concurrency: int | None, work_pool: str | None) -> bool:
    """A local backfill run one interval at a time uses the dbt worker on a warehouse that takes it
    (`dbt_executor: auto`, mage_dbt.dbt.executor_choice); intervals in worker processes or a work pool
    run in-process there (a `worker` setting still applies to them)."""
    from mage_dbt.cli.run_cmds import starts_dbt_worker
    from mage_dbt.errors import MageDbtError

    if resume:
        try:
            plan = load_plan(settings, resume)
        except MageDbtError:
            return False  # the resume reports it next
        pipeline, target, work_pool = plan.pipeline, plan.target, plan.work_pool
        concurrency = concurrency or plan.concurrency
    if not pipeline or work_pool or ((concurrency or 1) > 1 and settings.dbt_executor != "worker"):
        return False
    return starts_dbt_worker(settings, pipeline, target)


def _prepare_resume(settings: ProjectSettings, backfill_id: str, *, concurrency: int | None, force: bool):
    """Validate a resume without starting anything; returns the plan and the intervals to run."""
    from mage_dbt.backfill.lock import is_running
    from mage_dbt.backfill.state import COMPLETED, interval_statuses
    from mage_dbt.pipelines.pipeline import load_pipeline

    plan = load_plan(settings, backfill_id)
    if is_running(record_path(settings, plan.id).with_suffix(".lock")):
        raise BackfillError(
            f"backfill {plan.id} is running right now", hint="wait for it to finish, or stop its process, then resume"
        )
    check_unchanged(settings, plan, force=force)
    resolved = load_pipeline(settings, plan.pipeline, target=plan.target,
                             select=list(plan.select) if plan.select else None)
    check_concurrency(resolved, concurrency or plan.concurrency, work_pool=plan.work_pool)
    statuses = interval_statuses(plan)
    todo = [i for i in plan.intervals if statuses[interval_key(i)].status != COMPLETED]
    return plan, todo


def _run(settings: ProjectSettings, plan: BackfillPlan, *, resume: bool, concurrency: int | None,
         force: bool, keep_going: bool) -> int:
    from mage_dbt.backfill.flow import backfill_flow
    from mage_dbt.backfill.progress import RichProgress, use_sink
    from mage_dbt.backfill.state import count_statuses, interval_statuses
    from mage_dbt.runs.prefect_setup import quiet_prefect_console

    quiet_prefect_console()
    os.environ[PROJECT_DIR_ENV] = str(settings.root)  # the flow finds the project from here
    console.print(
        f"backfill [bold]{plan.id}[/]: {plan.pipeline} {plan.start}..{plan.end}, "
        f"{len(plan.intervals)} {plan.interval} intervals{' (resume)' if resume else ''}"
    )
    from mage_dbt.cli.console import err_console
    from mage_dbt.cli.live_progress import block_logs

    from mage_dbt.runs.heartbeats import engine_heartbeats_off

    # engine_heartbeats_off: the flow sends its own heartbeats, without Prefect's wait at the end.
    with block_logs(err_console), use_sink(RichProgress(console)), engine_heartbeats_off():
        state = backfill_flow(
            pipeline=plan.pipeline, start=plan.start, end=plan.end, interval=plan.interval,
            concurrency=concurrency or plan.concurrency, select=list(plan.select) if plan.select else None,
            full_refresh_first=plan.full_refresh_first, target=plan.target, backfill_id=plan.id,
            force=force, keep_going=keep_going, return_state=True,
        )
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, BaseException):
        raise outcome  # the flow stopped before running intervals (e.g. a BackfillError): show it as is
    counts = count_statuses(interval_statuses(plan))
    console.print(", ".join(f"{counts[s]} {s}" for s in STATUS_STYLE if counts.get(s)))
    console.print(f"backfill flow run: {state.state_details.flow_run_id}")
    if state.is_completed():
        return 0
    if state.is_cancelled():
        from mage_dbt.runs.interrupts import EXIT_CODE

        err_console.print(f"interrupted — resume with: mage-dbt backfill --resume {plan.id}", highlight=False,
                          soft_wrap=True)
        return EXIT_CODE
    console.print(f"[bold red]{state.message}[/]")
    return 1


def _dry_run(settings: ProjectSettings, pipeline: str, start: str, end: str, *, yes: bool, limit: int | None,
             **request) -> int:
    """Show what a backfill would run, without building its intervals: a century of hours is instant.

    The range, pipeline and concurrency are checked first (one error line); then the intervals are
    shown, and a range the real backfill would refuse as too long ends with that error (exit 2)."""
    checked = check_request(settings, pipeline, start, end, **request)
    window = checked.window
    _print_intervals(_window_rows(window), window.count, window.unit,
                     title=f"{checked.pipeline.name}: {window.count} {window.unit} intervals (dry run)")
    refusal = size_refusal(window, yes=yes, limit=limit)
    if refusal is not None:
        raise refusal
    return 0


def _window_rows(window: IntervalWindow) -> list[tuple[int, Interval]]:
    if window.count <= LIST_ALL_UP_TO:
        return list(enumerate(window, start=1))
    tail_start = window.count - EDGE_ROWS + 1
    return [*enumerate(window.head(EDGE_ROWS), start=1), *enumerate(window.tail(EDGE_ROWS), start=tail_start)]


def _print_intervals(rows: list[tuple[int, Interval]], total: int, unit: str, *, title: str) -> None:
    """A table of (position, interval) rows; more than LIST_ALL_UP_TO are cut to the first and last few."""
    if total > LIST_ALL_UP_TO and len(rows) > 2 * EDGE_ROWS:
        rows = [*rows[:EDGE_ROWS], *rows[-EDGE_ROWS:]]
    table = Table(title=title, title_justify="left")
    for column in ("#", "execution_date", "interval_start", "interval_end"):
        table.add_column(column)
    for index, (position, interval) in enumerate(rows):
        if index == EDGE_ROWS and total > len(rows):
            table.add_row("…", f"{total - len(rows)} more", "", "")
        table.add_row(str(position), interval_label(interval, unit), interval.start.isoformat(),
                      interval.end.isoformat())
    console.print(table)
    console.print(f"{total} intervals")


def _print_batches(plan: BackfillPlan) -> None:
    """The dbt batches of the backfill's microbatch phase (one dbt invocation over the range)."""
    from mage_dbt.backfill.state import phase_batches, phase_status

    phase = phase_status(plan)
    if phase is None:
        return
    batches = phase_batches(plan)
    models = sorted({b.key.split(" batch ")[0] for b in batches})
    table = Table(title=f"microbatch phase ({len(plan.microbatch_blocks)} blocks, one dbt invocation per run): "
                  f"{phase.status}, {phase.attempts} run(s); {len(batches)} batches of {', '.join(models[:6])}",
                  title_justify="left")
    table.add_column("batch", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("attempts", no_wrap=True, justify="right")
    for batch in batches:
        style = STATUS_STYLE.get(batch.status, "yellow")
        table.add_row(batch.key, f"[{style}]{batch.status}[/]", str(batch.attempts))
    console.print(table)


@app.command()
def backfills(
    backfill_id: Optional[str] = typer.Argument(None, help="Show the intervals of this backfill."),
    project_dir: Optional[Path] = ProjectDir,
) -> None:
    """List backfills with their interval counts per state (from Prefect), or one backfill's intervals."""
    from mage_dbt.backfill.lock import is_running
    from mage_dbt.backfill.state import STATUS_ORDER, count_statuses, interval_statuses

    settings = settings_for(project_dir)
    if backfill_id:
        plan = load_plan(settings, backfill_id)
        statuses = interval_statuses(plan)
        table = Table(title=f"backfill {plan.id}: {plan.pipeline} {plan.start}..{plan.end}", title_justify="left")
        table.add_column("interval", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("attempts", no_wrap=True, justify="right")
        table.add_column("flow run", overflow="fold")
        for interval in plan.intervals:
            s = statuses[interval_key(interval)]
            table.add_row(interval_label(interval, plan.interval), f"[{STATUS_STYLE[s.status]}]{s.status}[/]",
                          str(s.attempts), s.flow_run_id or "")
        console.print(table)
        _print_batches(plan)
        print_recap(console, "intervals that did not complete:", [
            (interval_label(i, plan.interval), statuses[interval_key(i)].status, statuses[interval_key(i)].message)
            for i in plan.intervals if statuses[interval_key(i)].status in ("failed", "crashed", "cancelled")])
        return
    records = list_records(settings)
    if not records:
        console.print("no backfills yet: start one with mage-dbt backfill PIPELINE --start D1 --end D2")
        return
    table = backfills_table("backfills", console.width)
    for raw in records:
        plan = BackfillPlan.from_dict(raw)
        counts = count_statuses(interval_statuses(plan))
        alive = is_running(record_path(settings, plan.id).with_suffix(".lock"))
        cells = [plan.id, f"{plan.start} .. {plan.end}", f"{len(plan.intervals)} {plan.interval}",
                 states_cell(counts, STATUS_ORDER) + (" (process running)" if alive else "")]
        if len(table.columns) > len(cells):
            cells.append(plan.created_at[:16].replace("T", " "))
        table.add_row(*cells)
    console.print(table)
