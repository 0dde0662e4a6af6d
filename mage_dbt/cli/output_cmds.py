"""`mage-dbt output PIPELINE BLOCK [--run ID]`: preview a stored block output (mage_dbt.blocks.outputs).

Tabular outputs show the run, the schema, the row count and the first rows; other outputs show
their JSON. Without `--run`, the newest run that stored an output of the block is used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mage_dbt.blocks.outputs import OutputNotFound, find_output, read_output
from mage_dbt.cli.console import console
from mage_dbt.cli.options import ProjectDir, settings_for
from mage_dbt.cli.typer_app import app


@app.command()
def output(
    pipeline: str = typer.Argument(..., help="Pipeline name: flows/<name>.yaml"),
    block: str = typer.Argument(..., help="A Python or SQL block of the pipeline."),
    run: Optional[str] = typer.Option(None, "--run", "-r", help="Flow run id (default: the newest run with this output)."),
    rows: int = typer.Option(10, "--rows", "-n", min=0, help="How many first rows to show."),
    project_dir: Optional[Path] = ProjectDir,
) -> None:
    """Show the stored output of BLOCK: schema, row count and first rows."""
    settings = settings_for(project_dir)
    try:
        found = find_output(settings.data_dir, pipeline, block, run)
    except OutputNotFound:
        _explain_dbt_block(settings, pipeline, block)  # "run it first" is wrong for a dbt block
        raise
    console.print(f"pipeline {pipeline} · block {block} · run {found.run_id}")
    console.print(f"file: {found.path}", soft_wrap=True)
    if found.kind == "json":
        text = json.dumps(read_output(found), indent=2, default=str)
        console.print(f"type: json ({len(text)} characters)")
        lines = text.splitlines()
        console.print("\n".join(lines[: max(rows, 1) * 5]) + ("\n..." if len(lines) > max(rows, 1) * 5 else ""),
                      markup=False)
        return
    _print_table(found, rows)


def _explain_dbt_block(settings, pipeline: str, block: str) -> None:
    """Raise a clearer error when BLOCK is a dbt node: dbt writes tables, mage_dbt stores no output."""
    from mage_dbt.errors import MageDbtError
    from mage_dbt.pipelines.pipeline import load_pipeline

    try:
        resolved = load_pipeline(settings, pipeline)
    except MageDbtError:
        return  # the original error says enough
    found = resolved.blocks.get(block)
    if found is None or not found.is_dbt_node or resolved.manifest is None:
        return
    node = resolved.manifest.nodes[found.unique_id]
    others = sorted(n for n, b in resolved.blocks.items() if b.kind in ("python", "sql"))
    relation = (node.relation_name or "").replace('"', "")
    where = (f"dbt builds it in the warehouse as {relation}" if relation and node.resource_type != "test"
             else "a dbt test's result is its status")
    raise OutputNotFound(
        f"'{block}' is a {found.kind} block: dbt blocks store no output in mage_dbt, {where}",
        hint=(f"query it there (select * from {relation} limit 10, on the dbt target of profiles.yml)"
              if relation and node.resource_type != "test" else "see its result with mage-dbt run or in the Prefect UI")
        + (f"; mage-dbt output shows Python/SQL blocks: {', '.join(others)}" if others else ""),
    )


def _print_table(found, rows: int) -> None:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(found.path)
    schema = parquet.schema_arrow
    console.print(f"type: {found.kind} · {found.rows} rows · {len(schema)} columns")
    columns = Table(title="schema", title_justify="left")
    columns.add_column("column")
    columns.add_column("type")
    for field in schema:
        columns.add_row(field.name, str(field.type))
    console.print(columns)
    if rows == 0 or not found.rows:
        return
    head = next(parquet.iter_batches(batch_size=rows), None)
    if head is None:
        return
    preview = Table(title=f"first {min(rows, found.rows)} rows", title_justify="left")
    names = [n for n in head.schema.names if not n.startswith("__index_level_")]
    for name in names:
        preview.add_column(name, overflow="fold")
    data = head.to_pydict()
    for index in range(head.num_rows):
        preview.add_row(*("" if data[n][index] is None else str(data[n][index]) for n in names))
    console.print(preview)
