"""Project verbs: `init` scaffolds a project, `pipelines` lists them, `blocks` shows one's DAG."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mage_dbt.cli.console import console
from mage_dbt.cli.options import ProjectDir, Target, settings_for
from mage_dbt.cli.typer_app import app
from mage_dbt.pipelines.pipeline import load_pipeline
from mage_dbt.pipelines.spec import list_pipelines


@app.command()
def init(
    directory: Path = typer.Argument(..., help="Folder to create the project in (new or empty)."),
    dbt_project: str = typer.Option("analytics", "--dbt-project", help="Name of the starter dbt project."),
) -> None:
    """Scaffold a mage_dbt project: mage_dbt.yaml, profiles.yml, flows/, dbt_projects/, git_sync/."""
    from mage_dbt.cli.scaffold import scaffold

    created = scaffold(directory, dbt_project)
    console.print(f"created {len(created)} files in {directory}")
    console.print(f"next: cd {directory} && mage-dbt run example --execution-date 2024-01-01")


@app.command()
def pipelines(project_dir: Optional[Path] = ProjectDir) -> None:
    """List the pipelines of the project (flows/*.yaml)."""
    settings = settings_for(project_dir)
    for name in list_pipelines(settings.flows_dir):
        console.print(name)


@app.command()
def blocks(
    pipeline: str = typer.Argument(..., help="Pipeline name: flows/<name>.yaml"),
    target: Optional[str] = Target,
    project_dir: Optional[Path] = ProjectDir,
) -> None:
    """List the blocks of PIPELINE with their kind, dbt group and upstream blocks."""
    from mage_dbt.blocks.block import compiled_into

    settings = settings_for(project_dir)
    resolved = load_pipeline(settings, pipeline, target=target)
    groups = sum(1 for u in resolved.units if u.kind == "dbt_group")
    table = Table(title=f"pipeline {resolved.name}: {len(resolved.blocks)} blocks, "
                  f"{groups} dbt group{'' if groups == 1 else 's'} (one dbt invocation each)",
                  title_justify="left")
    ephemeral = any(b.is_ephemeral for b in resolved.blocks.values())
    for column in ("block", "kind", "dbt group", "upstream", *(("note",) if ephemeral else ())):
        table.add_column(column, overflow="fold")
    for unit in resolved.units:
        for name in unit.blocks:
            block = resolved.blocks[name]
            note = () if not ephemeral else (
                f"ephemeral: compiled into {', '.join(compiled_into(resolved.blocks, name)) or 'no block of this pipeline'}"
                if block.is_ephemeral else "",)
            group = unit.id if unit.kind == "dbt_group" else ""
            table.add_row(name, block.kind, group, ", ".join(block.upstream), *note)
    console.print(table)
