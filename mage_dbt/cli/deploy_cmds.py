"""`mage-dbt deploy`, `serve`, `server` and `graph`: pipelines on a Prefect server, and their picture."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mage_dbt.cli.console import console
from mage_dbt.cli.options import ProjectDir, Target, settings_for
from mage_dbt.cli.typer_app import app
from mage_dbt.errors import ConfigError

Pipelines = typer.Argument(None, help="Pipeline names (flows/<name>.yaml); default: every pipeline.")


@app.command()
def deploy(
    pipelines: Optional[list[str]] = Pipelines,
    work_pool: Optional[str] = typer.Option(
        None, "--work-pool", "-p", help="Run on this Prefect work pool's workers (default: `mage-dbt serve`)."
    ),
    prefect_yaml: Optional[Path] = typer.Option(
        None, "--prefect-yaml", help="Write the deployments to this prefect.yaml instead (needs --work-pool)."
    ),
    image: Optional[str] = typer.Option(
        None, "--image", help="With --prefect-yaml: the container image of a Docker/Kubernetes work pool."
    ),
    project_dir: Optional[Path] = ProjectDir,
) -> int:
    """Register pipelines as Prefect deployments: schedules, parameter forms, full-refresh variants."""
    from mage_dbt.deploy.deployments import deploy as register, plan_deployments

    settings = settings_for(project_dir)
    if prefect_yaml is not None:
        if not work_pool:
            raise ConfigError("--prefect-yaml needs --work-pool NAME", hint="e.g. --work-pool local-process")
        from mage_dbt.deploy.prefect_yaml import write_prefect_yaml

        plans = plan_deployments(settings, pipelines)
        path = write_prefect_yaml(settings, plans, prefect_yaml, work_pool=work_pool, image=image)
        console.print(f"wrote {path} ({len(plans)} deployments for work pool {work_pool})")
        console.print(f"register them with: prefect deploy --all --prefect-file {path}")
        return 0
    if image:
        raise ConfigError("--image only applies with --prefect-yaml", hint="add --prefect-yaml prefect.yaml")
    results = register(settings, pipelines, work_pool=work_pool)
    table = Table(title="Prefect deployments", title_justify="left")
    for column in ("deployment", "schedule", "id", "action"):
        table.add_column(column, overflow="fold")
    for result in results:
        table.add_row(result.name, result.schedule, result.id, result.action)
    console.print(table)
    from mage_dbt.deploy.zombie_runs import ensure_and_say

    ensure_and_say(lambda line: console.print(line, highlight=False, soft_wrap=True))  # Crashed on missed heartbeats
    if work_pool:
        console.print(f"runs go to work pool {work_pool}: start a worker with `prefect worker start --pool {work_pool}`")
    else:
        console.print("run them with `mage-dbt serve` (or deploy with --work-pool NAME for Prefect workers)")
    return 0


@app.command()
def serve(
    pipelines: Optional[list[str]] = Pipelines,
    limit: int = typer.Option(1, "--limit", min=1, help="Most runs at the same time (DuckDB: keep 1)."),
    project_dir: Optional[Path] = ProjectDir,
) -> int:
    """Deploy pipelines and run their scheduled and UI-triggered runs from this process (Ctrl+C stops)."""
    from mage_dbt.deploy.serve import serve_pipelines

    settings = settings_for(project_dir)
    serve_pipelines(settings, pipelines, limit=limit, announce=lambda line: console.print(line))
    return 0


server_app = typer.Typer(
    help="Start a Prefect server with its UI (SQLite by default; PostgreSQL via "
    "PREFECT_API_DATABASE_CONNECTION_URL); `server status` / `server stop`: the local server that "
    "mage-dbt commands share when PREFECT_API_URL is not set.",
    invoke_without_command=True, no_args_is_help=False,
)
app.add_typer(server_app, name="server")


@server_app.callback()
def server(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(4200, "--port", help="Port of the API and the UI."),
) -> None:
    """Start a Prefect server with its UI (SQLite by default; PostgreSQL via PREFECT_API_DATABASE_CONNECTION_URL)."""
    if ctx.invoked_subcommand is not None:
        return
    from mage_dbt.deploy.serve import describe_database, server_command

    argv, env = server_command(host, port)
    url = env["PREFECT_UI_API_URL"]
    console.print(f"Prefect UI: {url[: -len('/api')]}  API: {url}")
    console.print(f"database: {describe_database(env)}")
    console.print(f"in other shells: export PREFECT_API_URL={url}")
    sys.stdout.flush()
    os.execve(argv[0], argv, env)


@server_app.command("status")
def server_status() -> int:
    """Show the local Prefect server: address, pids, log file, idle timeout (it starts nothing)."""
    from mage_dbt.deploy import local_server
    from mage_dbt.deploy.serve import describe_database

    def say(line: str) -> None:
        console.print(line, soft_wrap=True)  # addresses and paths stay whole, to copy them

    paths, record, healthy = local_server.status()
    configured = os.environ.get("PREFECT_API_URL") or local_server.configured_api_url()
    if configured:
        say(f"PREFECT_API_URL is set: commands use {configured}, not the local server")
    elif not local_server.enabled():
        say(f"{local_server.ENABLED_ENV}=0: each command starts a temporary Prefect server")
    if record is None or not healthy:
        state = "not running" if record is None else f"not answering (pid {record.pid})"
        say(f"local Prefect server: {state}; run, retry, backfill, full-refresh and rebuild "
            f"start it when PREFECT_API_URL is not set")
        say(f"log: {paths.log}")
        return 0
    used = local_server.last_used(paths)
    idle = "never stops by itself" if not record.idle_minutes else f"stops after {record.idle_minutes:g} min idle"
    say(f"local Prefect server: running at {record.ui_url}  API: {record.url}")
    say(f"pid: {record.pid} (supervisor {record.supervisor_pid}); started {record.started_at}; "
        f"last used {used.isoformat(timespec='seconds') if used else '-'}; {idle}")
    say(f"log: {record.log}")
    say(f"database: {describe_database({**os.environ, 'PREFECT_HOME': str(paths.home)})}")
    say(f"stop it with `mage-dbt server stop`; other tools: export PREFECT_API_URL={record.url}")
    return 0


@server_app.command("stop")
def server_stop() -> int:
    """Stop the local Prefect server now (the next run starts it again)."""
    from mage_dbt.deploy import local_server

    record = local_server.stop()
    if record is None:
        console.print("local Prefect server: not running")
    else:
        console.print(f"stopped the local Prefect server at {record.ui_url} (pid {record.pid})")
    return 0


@app.command()
def graph(
    pipeline: str = typer.Argument(..., help="Pipeline name: flows/<name>.yaml"),
    output: Path = typer.Option(..., "--output", "-o", help="FILE.svg, or FILE.html (self-contained, works offline)."),
    tests: bool = typer.Option(False, "--tests", help="Also draw dbt tests (hidden by default: they are most of the boxes)."),
    target: Optional[str] = Target,
    project_dir: Optional[Path] = ProjectDir,
) -> int:
    """Draw PIPELINE's blocks and dependencies, kinds coloured and dbt groups outlined (tests: --tests)."""
    from mage_dbt.pipelines.graph import render_to_file
    from mage_dbt.pipelines.pipeline import load_pipeline

    settings = settings_for(project_dir)
    if output.suffix.lower() not in (".svg", ".html", ".htm"):
        raise ConfigError(f"cannot draw the graph to {str(output)!r}", hint="name the output file .svg or .html")
    resolved = load_pipeline(settings, pipeline, target=target)
    nodes = graph_nodes(resolved)
    hidden = 0
    if not tests:
        from mage_dbt.pipelines.graph import without_kind

        nodes, hidden = without_kind(nodes, "dbt_test")
    path = render_to_file(nodes, output, title=f"pipeline {resolved.name}")
    groups = {n.group for n in nodes if n.group}
    note = f" ({hidden} dbt tests hidden: --tests draws them)" if hidden else ""
    console.print(f"wrote {path}: {len(nodes)} blocks, {len(groups)} dbt group(s){note}", soft_wrap=True)
    return 0


def graph_nodes(pipeline) -> list:
    """One `GraphNode` per block; dbt blocks are grouped by the unit (one dbt invocation) they run in."""
    from mage_dbt.pipelines.graph import GraphNode

    return [
        GraphNode(
            name=block.name, kind=block.kind, upstream=tuple(block.upstream),
            group=pipeline.unit_of.get(block.name) if block.is_dbt_node else None,
        )
        for block in pipeline.blocks.values()
    ]
