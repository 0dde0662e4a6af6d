"""`mage-dbt retry`: re-run only the failed and skipped blocks of a past run, as a new flow run."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mage_dbt.blocks.outputs import check_data_dir
from mage_dbt.cli.console import console
from mage_dbt.cli.options import ProjectDir, settings_for
from mage_dbt.cli.typer_app import app


@app.command()
def retry(
    pipeline: Optional[str] = typer.Argument(None, help="Pipeline whose latest failed run to retry."),
    run: Optional[str] = typer.Option(
        None, "--run", help="Flow run id to retry (the `flow run:` line of `mage-dbt run`)."),
    project_dir: Optional[Path] = ProjectDir,
) -> int:
    """Re-run the failed and skipped blocks of PIPELINE's latest failed run (or of --run ID).

    The retry is a new flow run with the same execution date and parameters, tagged
    retry-of:<id>; blocks that succeeded in the original run are not re-run.
    """
    from mage_dbt.cli.run_cmds import finish_run
    from mage_dbt.pipelines.spec import load_pipeline_spec
    from mage_dbt.runs.retry import find_run, plan_retry, run_retry

    settings = settings_for(project_dir)
    check_data_dir(settings.data_dir)
    if pipeline:
        load_pipeline_spec(settings.flows_dir, pipeline)  # an unknown pipeline fails here, with the list
    from mage_dbt.runs.run_liveness import mark_dead_runs

    dead = mark_dead_runs(settings.data_dir)  # RUNNING in Prefect, but their process is gone
    if dead:
        console.print(f"marked {len(dead)} run(s) whose process is gone Crashed: {', '.join(dead[:10])}")
    source = find_run(settings, pipeline, run)
    if source is None:
        console.print(f"nothing to retry: no failed run of pipeline '{pipeline}' in this project "
                      "is waiting for a retry")
        return 0
    plan = plan_retry(settings, source)
    when = plan.execution_date.isoformat()
    if plan.gone:
        console.print(f"not retried, no longer blocks of pipeline '{source.pipeline}': {', '.join(plan.gone)}")
    if not plan.blocks:
        console.print(f"nothing to retry: all {len(plan.succeeded)} blocks of flow run {source.id} "
                      f"({source.pipeline}, {when}) succeeded")
        return 0
    shown = ", ".join(plan.blocks[:20]) + (" ..." if len(plan.blocks) > 20 else "")
    console.print(f"retrying {len(plan.blocks)} of {len(plan.blocks) + len(plan.succeeded)} blocks of flow run "
                  f"{source.id} ({source.pipeline}, execution date {when}): {shown}")
    from mage_dbt.cli.console import err_console
    from mage_dbt.cli.live_progress import block_progress

    with block_progress(err_console, f"preparing the retry of flow run {source.id}"):
        summary = run_retry(plan)
    return finish_run(summary)
