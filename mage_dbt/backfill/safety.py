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
"""

from __future__ import annotations

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
