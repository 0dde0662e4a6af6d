"""`mage-dbt plan`: per block, what a run would do (run, reuse, full refresh) and why; runs nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from mage_dbt.cli.console import console
from mage_dbt.cli.options import ProjectDir, Target, parse_vars, settings_for
from mage_dbt.cli.typer_app import app

ACTION_STYLE = {"run": "cyan", "reuse": "blue", "full refresh": "magenta", "compile": "dim"}


@app.command()
def plan(
    pipeline: str = typer.Argument(..., help="Pipeline name: flows/<name>.yaml"),
    execution_date: str = typer.Option(..., "--execution-date", "-d", help="YYYY-MM-DD or ISO timestamp."),
    target: Optional[str] = Target,
    full_refresh: bool = typer.Option(False, "--full-refresh", help="Plan a full-refresh run."),
    select: Optional[list[str]] = typer.Option(None, "--select", "-s", help="Only these blocks (as `run --select`)."),
    var: Optional[list[str]] = typer.Option(None, "--var", help="Extra dbt var KEY=VALUE (repeatable)."),
    reuse: Optional[bool] = typer.Option(None, "--reuse/--no-reuse", help="Plan with reuse on or off "
                                         "(default: the pipeline's reuse: setting)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per block instead of the table."),
    project_dir: Optional[Path] = ProjectDir,
) -> int:
    """Show what a run of PIPELINE for one execution date would do with each block, and why.

    Nothing runs: the state key of every dbt node is compared with its last successful build on
    the target (see "Reuse, plan and slim runs" in the README).
    """
    from mage_dbt.dates import parse_execution_date
    from mage_dbt.pipelines.spec import load_pipeline_spec
    from mage_dbt.runs.run_plan import plan_run

    settings = settings_for(project_dir)
    spec = load_pipeline_spec(settings.flows_dir, pipeline)
    when = parse_execution_date(execution_date, spec.timezone)
    rows = plan_run(settings, spec, when, target=target, full_refresh=full_refresh, select=select,
                    vars=parse_vars(var) or None, reuse=reuse)
    if as_json:
        for row in rows:
            print(json.dumps(row.__dict__))
        return 0
    table = Table(title=f"plan · {pipeline} · {execution_date}", title_justify="left")
    table.add_column("block", overflow="fold", min_width=16)
    table.add_column("kind", no_wrap=True)
    table.add_column("action", no_wrap=True)
    table.add_column("why", overflow="fold", ratio=1)
    for row in rows:
        style = ACTION_STYLE.get(row.action, "")
        table.add_row(escape(row.block), row.kind, f"[{style}]{row.action}[/]", escape(row.reason))
    console.print(table)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.action] = counts.get(row.action, 0) + 1
    console.print(", ".join(f"{n} {action}" for action, n in sorted(counts.items())) + "; nothing was run")
    return 0
