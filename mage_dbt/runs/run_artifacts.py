"""The run summary as a Prefect artifact: what an analyst reads on the flow run page after "Run".

`publish_run_summary` creates ONE markdown artifact per pipeline run (key `mage-dbt-run-<pipeline>`,
so the artifact page keeps each pipeline's history): for each failed block, the error's first lines,
where its compiled SQL (or its block file) is, and the exact command that re-runs it
(`mage-dbt retry --run <id>`; for incremental models also the targeted `mage-dbt full-refresh`).
Failing dbt tests show their failure count and, with `store_failures`, the relation that holds the
failing rows. Then the block table (block, kind, status, seconds, rows, message) and the tables the
run wrote with their upstream tables (the asset lineage of `runs/assets.py`, readable in the
open-source UI, which has no asset pages). `run_summary_markdown` is the pure
part (tested without a server). Publishing is one API call at the end of the run; an error is logged,
never raised: the artifact must not change the run's outcome.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mage_dbt.runs.block_results import FAILED, SUCCESS, BlockResult, RunSummary

ERROR_LINES = 6  # lines of a failure's error shown in its section
MESSAGE_WIDTH = 100  # characters of a message in the table (the section has the whole error)


def artifact_key(pipeline: str, prefix: str = "mage-dbt-run") -> str:
    """A valid Prefect artifact key (lowercase letters, digits, dashes) for a pipeline."""
    slug = re.sub(r"[^a-z0-9]+", "-", pipeline.lower()).strip("-") or "pipeline"
    return f"{prefix}-{slug}"


def compiled_sql_path(pipeline: Any, block_name: str) -> Path | None:
    """Where dbt wrote the compiled SQL of a dbt block (dbt's own rule: target/compiled/<package>/
    <original file>, plus the node's path for nodes sharing one file, like generic tests)."""
    block = pipeline.blocks.get(block_name)
    node = _node(pipeline, block)
    ref = getattr(pipeline, "dbt_ref", None)
    if node is None or ref is None or not node.original_file_path:
        return None
    relative = Path(node.original_file_path)
    if node.path and Path(node.path).name != relative.name:
        relative = relative / node.path
    return Path(ref.target_path) / "compiled" / node.package_name / relative


def retry_commands(pipeline: Any, result: BlockResult, run_id: str, execution_date: str) -> list[str]:
    """The exact commands that re-run a failed block: the retry of this run (failed and skipped
    blocks only), and for an incremental model the targeted full refresh of just that model."""
    commands = [f"mage-dbt retry --run {run_id}"]
    node = _node(pipeline, pipeline.blocks.get(result.name))
    if node is not None and node.is_incremental:
        commands.append(f"mage-dbt full-refresh {pipeline.name} --select {result.name} "
                        f"--execution-date {execution_date}")
    return commands


def run_summary_markdown(summary: RunSummary, pipeline: Any, run_id: str, assets: Any = ()) -> str:
    """The artifact's markdown: headline, one section per failure, block table, the tables written
    (`assets`: `runs.assets.Materialization`s) with their upstream tables."""
    counts: dict[str, int] = {}
    for result in summary.results.values():
        counts[result.status] = counts.get(result.status, 0) + 1
    headline = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no blocks ran"
    lines = [f"# {summary.pipeline} · {summary.execution_date}", "",
             f"**{headline}** · {summary.dbt_invocations} dbt invocation(s) · flow run `{run_id}`"]
    failed = [r for r in summary.results.values() if r.status == FAILED]
    if failed:  # first: what an analyst has to act on
        lines += ["", "## What failed and what to do next"]
    for result in sorted(failed, key=lambda r: r.name):
        lines += ["", *failure_section(summary, pipeline, result, run_id)]
    lines += ["", "## Blocks", "", "| block | kind | status | seconds | rows | message |",
              "|---|---|---|---:|---:|---|"]
    order = {FAILED: 0, "cancelled": 1, "skipped": 2, SUCCESS: 3}
    for result in sorted(summary.results.values(), key=lambda r: (order.get(r.status, 1), r.name)):
        lines.append("| " + " | ".join([
            _cell(result.name), _cell(result.kind), _status(result), f"{result.seconds:.2f}",
            "" if result.rows is None else str(result.rows), _cell(_short(result.message or ""))]) + " |")
    if assets:  # the lineage, readable where the Prefect UI has no asset pages (open-source server)
        lines += ["", "## Tables written (Prefect assets)", "", "| asset | block | status | upstream assets |",
                  "|---|---|---|---|"]
        for item in sorted(assets, key=lambda a: a.key):
            ups = "<br>".join(f"`{k}`" for k in item.upstream)
            lines.append(f"| `{item.key}` | {_cell(item.block)} | {item.status} | {ups} |")
    return "\n".join(lines) + "\n"


def failure_section(summary: RunSummary, pipeline: Any, result: BlockResult, run_id: str) -> list[str]:
    lines = [f"### {result.name} ({result.kind})", ""]
    if result.failures is not None and result.kind == "dbt_test":
        lines.append(f"- failures: **{result.failures}** failing row(s)")
    if result.failures_relation:
        lines.append(f"- failing rows stored in `{result.failures_relation}`")
    sql = compiled_sql_path(pipeline, result.name)
    if sql is not None:
        lines.append(f"- compiled SQL: `{sql}`")
    block = pipeline.blocks.get(result.name)
    spec_file = getattr(getattr(block, "spec", None), "file", None)
    if spec_file:
        lines.append(f"- block file: `{spec_file}`")
    error = [line.rstrip() for line in (result.message or "").splitlines() if line.strip()][:ERROR_LINES]
    if error:
        lines += ["", "```text", *error, "```"]
    lines += ["", "Re-run it:", "", "```bash",
              *retry_commands(pipeline, result, run_id, summary.execution_date), "```"]
    return lines


def publish_run_summary(summary: RunSummary, pipeline: Any, run_id: str, logger: Any = None,
                        assets: Any = ()) -> Any:
    """Create the run's markdown artifact (inside the flow run, so Prefect links it); its id or None."""
    from prefect.artifacts import create_markdown_artifact

    try:
        return create_markdown_artifact(
            markdown=run_summary_markdown(summary, pipeline, run_id, assets), key=artifact_key(summary.pipeline),
            description=f"mage_dbt run summary of {summary.pipeline} for {summary.execution_date}")
    except Exception as exc:  # reporting must never change the run's outcome
        if logger is not None:
            logger.warning("could not publish the run summary artifact: %s", exc)
        return None


def _node(pipeline: Any, block: Any) -> Any:
    manifest = getattr(pipeline, "manifest", None)
    if block is None or not block.unique_id or manifest is None:
        return None
    return manifest.nodes.get(block.unique_id)


def _status(result: BlockResult) -> str:
    if result.dbt_status == "warn":
        return "**warn**"
    return f"**{result.status}**" if result.status != SUCCESS else result.status


def _short(text: str) -> str:
    one = " ".join(text.split())
    return one if len(one) <= MESSAGE_WIDTH else one[: MESSAGE_WIDTH - 1] + "…"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
