"""Which blocks may run for several backfill intervals at the same time, and the refusal when not.

Concurrent intervals are safe only for blocks that write one interval's rows: incremental models
(the first interval runs alone and creates their tables), plus ephemeral models (dbt inlines them)
and tests (read-only). Everything else is rebuilt whole by every interval, and two intervals
rebuilding one relation at once collide: on Postgres dbt renames the old table to
`<name>__dbt_backup` and the second run fails with `relation "<name>__dbt_backup" already
exists`; a seed or snapshot loaded twice at once can double its rows. Microbatch models (incremental
with `incremental_strategy: microbatch`) are refused too: without `--event-time-start/--event-time-end`
dbt picks their batches from the current time, so concurrent intervals would rewrite the same batches. So `--concurrency` > 1 is refused, before
anything is recorded or started, when the pipeline's selected blocks include such a block; the
message names them and the fixes.

`order_dependent_models`: an incremental `merge` model upserts rows in place (an order placed on one
day and shipped on the next), so the later interval's merge must land last. Intervals running at once
finish in any order; such models are named in a warning (not refused: a merge whose keys never span
intervals is safe, and only the user knows), with `depends_on_past: true` as the fix.

`check_pool_target`: intervals submitted to a work pool run in other processes, often on other
machines, so a DuckDB target (a local file, one writer at a time) is refused for them.
"""

from __future__ import annotations

from typing import Any

from mage_dbt.errors import BackfillError

# Model materializations that concurrent intervals can share (see the module docstring).
CONCURRENT_MODEL_MATERIALIZATIONS = frozenset({"incremental", "ephemeral"})
SHOWN = 8  # blocks named in the message


def _concurrent_model(node) -> bool:
    return (node.resource_type == "model" and node.materialized in CONCURRENT_MODEL_MATERIALIZATIONS
            and node.incremental_strategy != "microbatch")


def not_concurrent(pipeline) -> dict[str, str]:
    """Blocks of `pipeline` that concurrent intervals cannot run, with what they are."""
    found: dict[str, str] = {}
    nodes = pipeline.manifest.nodes if pipeline.manifest is not None else {}
    for name, block in sorted(pipeline.blocks.items()):
        if block.unique_id and block.unique_id in nodes:
            node = nodes[block.unique_id]
            if node.resource_type == "test" or _concurrent_model(node):
                continue
            if node.resource_type != "model":
                found[name] = node.resource_type
            else:
                found[name] = "microbatch" if node.incremental_strategy == "microbatch" else str(node.materialized)
        elif block.kind == "sql" and block.spec is not None and block.spec.option("materialize"):
            found[name] = f"sql block, materialize: {block.spec.option('materialize')}"
    return found


def check_concurrent_intervals(pipeline, concurrency: int) -> None:
    """Refuse `concurrency` > 1 for a pipeline whose intervals cannot overlap (see the docstring)."""
    if concurrency <= 1:
        return
    found = not_concurrent(pipeline)
    if not found:
        return
    listed = ", ".join(f"{name} ({what})" for name, what in list(found.items())[:SHOWN])
    if len(found) > SHOWN:
        listed += f" and {len(found) - SHOWN} more"
    nodes = pipeline.manifest.nodes if pipeline.manifest is not None else {}
    incremental = sorted(n for n, b in pipeline.blocks.items()
                         if b.unique_id in nodes and nodes[b.unique_id].is_incremental
                         and _concurrent_model(nodes[b.unique_id]))
    narrow = (f"backfill only the incremental models (--select {' --select '.join(incremental[:SHOWN])})"
              if incremental else "backfill only incremental models")
    raise BackfillError(
        f"--concurrency {concurrency} would run these blocks for several intervals at once, but they "
        f"are not written one interval at a time (concurrent rebuilds of one relation collide, e.g. "
        f"relation \"<name>__dbt_backup\" already exists): {listed}",
        hint=f"run with --concurrency 1, or {narrow}, or exclude those blocks from the pipeline "
        f"(dbt: exclude: in flows/{pipeline.name}.yaml)",
    )


def order_dependent_models(pipeline) -> list[str]:
    """Blocks of `pipeline` that are incremental `merge` models (see the module docstring)."""
    nodes = pipeline.manifest.nodes if pipeline.manifest is not None else {}
    merged = []
    for name, block in pipeline.blocks.items():
        node = nodes.get(block.unique_id) if block.unique_id else None
        if node is not None and node.resource_type == "model" and node.is_incremental \
                and node.incremental_strategy == "merge":
            merged.append(name)
    return sorted(merged)


def order_warning(pipeline, concurrency: int, *, work_pool: str | None = None) -> str | None:
    """The warning for intervals that may run at once over merge models, or None."""
    if pipeline.spec.depends_on_past or (concurrency <= 1 and not work_pool):
        return None
    merged = order_dependent_models(pipeline)
    if not merged:
        return None
    return (f"intervals run at once may finish out of date order; these merge models keep whichever interval's "
            f"merge lands last for a key changed in several intervals: {', '.join(merged[:SHOWN])}. If a later "
            f"interval must win, set depends_on_past: true in flows/{pipeline.name}.yaml")


def check_pool_target(resolved: Any) -> None:
    """Refuse a DuckDB target: pool workers are separate processes (often machines), one writer per file."""
    manifest = resolved.manifest
    adapter = getattr(manifest.dbt_manifest.metadata, "adapter_type", None) if manifest is not None else None
    if adapter == "duckdb":
        target = resolved.dbt_ref.target if resolved.dbt_ref and resolved.dbt_ref.target else "default"
        raise BackfillError(
            f"--work-pool runs intervals in worker processes, possibly on other machines; target '{target}' is "
            "DuckDB, a local file that takes one writing process at a time",
            hint="drop --work-pool (intervals then run here), or use a Postgres/BigQuery target")


def check_concurrency(pipeline: Any, concurrency: int, *, work_pool: str | None = None) -> None:
    """DuckDB takes one writing process per database file: concurrency > 1 (or a work pool) is refused
    there; a `depends_on_past` pipeline runs one interval at a time."""
    if concurrency > 1 and pipeline.spec.depends_on_past:
        raise BackfillError(
            f"--concurrency {concurrency}: pipeline '{pipeline.name}' declares depends_on_past: true, so each "
            "interval builds on the previous one and they run one after another",
            hint="drop --concurrency, or remove depends_on_past from the pipeline file if intervals are independent")
    if work_pool:
        check_pool_target(pipeline)
    if concurrency <= 1 or pipeline.manifest is None:
        return
    adapter = getattr(pipeline.manifest.dbt_manifest.metadata, "adapter_type", None)
    if adapter == "duckdb":
        raise BackfillError(
            f"--concurrency {concurrency} needs a warehouse that takes concurrent writers; target "
            f"'{pipeline.dbt_ref.target if pipeline.dbt_ref and pipeline.dbt_ref.target else 'default'}' "
            "is DuckDB, whose database file takes one writing process at a time",
            hint="drop --concurrency (intervals then run one after another), or use a Postgres/BigQuery target",
        )
    check_concurrent_intervals(pipeline, concurrency)  # tables, views, seeds, snapshots: one interval at a time
