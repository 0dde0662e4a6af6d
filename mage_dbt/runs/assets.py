"""The warehouse tables a run wrote, reported as Prefect asset materializations with their lineage.

Every dbt model, seed and snapshot a run materializes, and every table a Python block declares in
`writes:` or a SQL block creates with `materialize:`, is one asset keyed by its warehouse relation:
`<adapter>://<database>/<schema>/<name>` (lowercase, e.g. `duckdb://demo/main/fct_orders`). Its
upstream assets are the relations it reads: a dbt node's `depends_on` (sources included, ephemeral
models looked through), a Python/SQL block's upstream blocks' tables and the tables its SQL reads.

Our task runs are reported by hand (`runs/task_runs.py`), not by Prefect's task engine, so the events
its `AssetContext.emit_events` would send are built here the same way: `prefect.asset.referenced`
for each upstream asset (once per run) and `prefect.asset.materialization.succeeded|failed` with the
upstream assets (role `asset`), `mage-dbt` (role `asset-materialized-by`) and the block's task run as
related resources, and the metadata as payload: rows affected, seconds, materialization, execution
date, dbt unique id, pipeline. The resource carries name, description and owners from the manifest.
Events go through Prefect's EventsWorker queue, sent with the run's other events: each block's as
its task run ends (`AssetEvents`), so they are built and sent while the rest of the run goes on.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable

from mage_dbt.runs.block_results import FAILED, SUCCESS, RunSummary

LOG = logging.getLogger("mage_dbt.assets")
MATERIALIZED_BY = "mage-dbt"
ASSET_KINDS = ("dbt_model", "dbt_seed", "dbt_snapshot")
MAX_DESCRIPTION = 2500  # Prefect's limit for an asset description


def relation_key(adapter: str, database: str | None, schema: str | None, name: str) -> str:
    """The asset key of a warehouse relation (quoted identifiers unquoted, lowercase; a character
    Prefect refuses in keys, like a space, `%` or `#`, becomes `_`)."""
    parts = [re.sub(r"[^a-z0-9_.$@+=:,;!*()~-]", "_", str(p).strip('"`').lower()) for p in (database, schema, name) if p]
    return f"{adapter.lower()}://" + "/".join(parts)


@dataclass
class Materialization:
    """One asset a block of the run wrote (or failed to write)."""

    block: str
    key: str
    status: str  # "succeeded" or "failed"
    properties: dict[str, Any] = field(default_factory=dict)
    upstream: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


class AssetMap:
    """Asset keys of a pipeline's relations: dbt nodes by unique id, tables by (schema, table)."""

    def __init__(self, pipeline: Any, adapter: str, database: str | None) -> None:
        self.pipeline = pipeline
        self.adapter = adapter
        self.nodes = pipeline.manifest.nodes if pipeline.manifest is not None else {}
        self.database = database or next((n.database for n in self.nodes.values() if n.database), None)
        self.by_table: dict[tuple[str, str], str] = {}
        self.properties: dict[str, dict[str, Any]] = {}
        for node in self.nodes.values():
            key = self.node_key(node)
            if key is not None and node.schema:
                self.by_table[(node.schema.lower(), (node.alias or node.name).lower())] = key

    def node_key(self, node: Any) -> str | None:
        if node.resource_type not in ("source", "model", "seed", "snapshot") or node.materialized == "ephemeral":
            return None
        if not node.schema:
            return None
        key = relation_key(self.adapter, node.database, node.schema, node.alias or node.name)
        props = {"name": node.name if node.resource_type != "source" else ".".join(node.fqn[-2:]) or node.name}
        if node.description:
            props["description"] = node.description[:MAX_DESCRIPTION]
        if node.owner:
            props["owners"] = [node.owner]
        self.properties.setdefault(key, props)
        return key

    def table_key(self, schema: str, table: str) -> str:
        return self.by_table.get((schema.lower(), table.lower())) or relation_key(
            self.adapter, self.database, schema, table)

    def node_upstream(self, unique_id: str) -> tuple[str, ...]:
        """Asset keys a dbt node reads: its depends_on, through ephemeral models."""
        out: dict[str, None] = {}
        todo, seen = list(self.nodes[unique_id].depends_on) if unique_id in self.nodes else [], set()
        while todo:
            uid = todo.pop(0)
            node = self.nodes.get(uid)
            if uid in seen or node is None:
                continue
            seen.add(uid)
            if node.resource_type == "model" and node.materialized == "ephemeral":
                todo.extend(node.depends_on)
            elif (key := self.node_key(node)) is not None:
                out[key] = None
        return tuple(out)

    def block_writes(self, name: str) -> tuple[str, ...]:
        """Asset keys of the tables block `name` writes (dbt node, Python `writes:`, SQL `materialize:`)."""
        block = self.pipeline.blocks[name]
        if block.kind in ASSET_KINDS and block.unique_id in self.nodes:
            key = self.node_key(self.nodes[block.unique_id])
            return (key,) if key else ()
        io = self.pipeline.block_io.get(name)
        return tuple(sorted(self.table_key(*t) for t in io.writes)) if io is not None else ()

    def block_upstream(self, name: str) -> tuple[str, ...]:
        block = self.pipeline.blocks[name]
        if block.kind in ASSET_KINDS and block.unique_id:
            return self.node_upstream(block.unique_id)
        out: dict[str, None] = {}
        io = self.pipeline.block_io.get(name)
        for table in sorted(io.reads if io is not None else ()):
            out[self.table_key(*table)] = None
        for up in sorted(block.upstream):  # what the upstream blocks wrote
            for key in self.block_writes(up) if up in self.pipeline.blocks else ():
                out[key] = None
        own = set(self.block_writes(name))
        return tuple(k for k in out if k not in own)


def materializations(pipeline: Any, summary: RunSummary, adapter: str,
                     database: str | None = None) -> list[Materialization]:
    """What the run materialized, block by block (skipped, cancelled and reused blocks wrote nothing:
    a reused node's table is the one its last build left, already reported by that run)."""
    assets = AssetMap(pipeline, adapter, database)
    return [m for name in summary.results for m in block_materializations(assets, summary, name)]


def block_materializations(assets: AssetMap, summary: RunSummary, name: str) -> list[Materialization]:
    """What block `name` materialized, by its result in `summary` (none when it has no result yet)."""
    pipeline, result = assets.pipeline, summary.results.get(name)
    if result is None or result.status not in (SUCCESS, FAILED) or result.reused or name not in pipeline.blocks:
        return []
    block = pipeline.blocks[name]
    node = assets.nodes.get(block.unique_id) if block.unique_id else None
    materialized = (node.materialized if node is not None and node.resource_type == "model"
                    else node.resource_type if node is not None else block.kind)
    metadata = {"rows_affected": result.rows, "seconds": result.seconds, "materialization": materialized,
                "execution_date": summary.execution_date, "pipeline": summary.pipeline, "block": name,
                "dbt_unique_id": block.unique_id, "status": result.dbt_status or result.status}
    upstream = assets.block_upstream(name)
    return [Materialization(
        block=name, key=key, status="succeeded" if result.status == SUCCESS else "failed",
        properties=assets.properties.get(key, {"name": key.rsplit("/", 1)[-1]}),
        upstream=upstream, metadata={k: v for k, v in metadata.items() if v is not None})
        for key in assets.block_writes(name)]


class AssetEvents:
    """A run's asset events, queued as each block's task run ends (`block_ended`, called by
    TaskRunReporter.finished), so building and sending them overlaps the rest of the run instead
    of following it; `finish()` queues those of the blocks that ended without that call (reused
    or cancelled blocks write nothing; a result recorded by other paths) and returns them all, in
    the summary's order. Each upstream asset is referenced once per run, when the first block
    reading it ends. Thread-safe: the in-process executor ends blocks from dbt's threads."""

    def __init__(self, assets: AssetMap, summary: RunSummary, task_run_ids: Any) -> None:
        self._assets = assets
        self._summary = summary
        self._task_run_ids = task_run_ids  # () -> {block: task run id}
        self._lock = threading.Lock()
        self._reported: dict[str, list[Materialization]] = {}
        self._referenced: set[str] = set()
        self._properties: dict[str, Any] = {}  # of every asset materialized so far

    def block_ended(self, name: str) -> None:
        with self._lock:
            if name in self._reported or name not in self._summary.results:
                return
            found = self._reported[name] = block_materializations(self._assets, self._summary, name)
            referenced = list(dict.fromkeys(k for m in found for k in m.upstream if k not in self._referenced))
            self._referenced.update(referenced)
            self._properties.update((m.key, m.properties) for m in found)
            properties = {k: self._properties[k] for k in referenced if k in self._properties}
        if found:
            emit_materializations(found, self._task_run_ids(), referenced=referenced, properties=properties)

    def finish(self) -> list[Materialization]:
        for name in list(self._summary.results):
            self.block_ended(name)
        return [m for name in self._summary.results for m in self._reported.get(name, ())]


def resource(key: str, properties: dict[str, Any]) -> dict[str, str]:
    """An asset as an event resource, the way Prefect's AssetContext writes it."""
    from prefect.assets import Asset, AssetProperties
    from prefect.context import AssetContext

    return AssetContext.asset_as_resource(Asset(key=key, properties=AssetProperties(**properties)))


def emit_materializations(found: list[Materialization], task_run_ids: dict[str, Any], referenced: Iterable[str],
                          properties: dict[str, Any]) -> int:
    """Queue asset events (inside the flow run's context): one `referenced` event per key of
    `referenced` (with its properties as a materialization of the run, when it is one), one
    materialization per item of `found`; how many were queued."""
    from prefect.events import emit_event

    sent = 0
    for key in referenced:  # once per run, however many assets read it
        if emit_event(event="prefect.asset.referenced", resource=resource(key, properties.get(key, {})), related=[]):
            sent += 1
    for item in found:
        related = [{"prefect.resource.id": k, "prefect.resource.role": "asset"} for k in item.upstream]
        related.append({"prefect.resource.id": MATERIALIZED_BY, "prefect.resource.role": "asset-materialized-by"})
        if item.block in task_run_ids:
            related.append({"prefect.resource.id": f"prefect.task-run.{task_run_ids[item.block]}",
                            "prefect.resource.role": "task-run", "prefect.resource.name": item.block})
        if emit_event(event=f"prefect.asset.materialization.{item.status}", resource=resource(item.key, item.properties),
                      related=related, payload=item.metadata):
            sent += 1
    return sent


def asset_events(settings: Any, pipeline: Any, summary: RunSummary, context: Any, task_run_ids: Any,
                 logger: Any = None) -> AssetEvents | None:
    """The run's AssetEvents (None when the pipeline writes no table, or its target cannot be told:
    then a warning is logged; reporting assets never changes the run's outcome)."""
    try:
        from mage_dbt.blocks.support import block_target

        if pipeline.manifest is None and not pipeline.block_io:
            return None
        target = block_target(settings, pipeline, context)
        return AssetEvents(AssetMap(pipeline, target.type, target.database), summary, task_run_ids)
    except Exception as exc:  # reporting must never change the run's outcome
        (logger or LOG).warning("could not report the run's assets to Prefect: %s", exc)
        return None


def finish_assets(events: AssetEvents | None, logger: Any = None) -> list[Materialization]:
    """Queue the asset events not sent yet and list every materialization of the run; errors are
    logged, never raised."""
    try:
        return events.finish() if events is not None else []
    except Exception as exc:  # reporting must never change the run's outcome
        (logger or LOG).warning("could not report the run's assets to Prefect: %s", exc)
        return []
