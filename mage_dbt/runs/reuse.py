"""Reuse: a dbt node whose state key equals the key of its last successful build is not run again.

Before a dbt group runs, `RunReuse.split` computes every node's key (`mage_dbt.dbt.state_keys`):
nodes whose key matches what the target's records say (`mage_dbt.dbt.state_store`) get a
Completed state named "Reused" with the reason and leave the dbt invocation; the others run. An
incremental model is reused only for an interval it already built with the same key. A full
refresh never reuses (a targeted one: not the nodes it rebuilds), and a node without a trustworthy
key (it reads the clock, `run_started_at`, an env var, a source without a data version) always runs.

Every run records, whether reuse is on or not: the keys of the nodes it built (a node that failed,
or ran without a key, is forgotten: its table's content is unknown), when its Python blocks wrote
the tables they declare in `writes:`, and, when it succeeded, its manifest for slim runs. A dbt
command block may rebuild anything: after one, the target's records are cleared. Sources' data
versions are `max(loaded_at_field)` read through the target's connection, plus recorded writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from mage_dbt.blocks.block import through_ephemeral
from mage_dbt.dbt.state_keys import (
    KeyComputer, KeyInputs, StateKey, diff_reason, environment_stamp, source_queries, upstream_sources,
)
from mage_dbt.dbt.state_store import StateStore, state_dir
from mage_dbt.runs.block_results import CANCELLED, FAILED, SUCCESS, BlockResult
from mage_dbt.runs.freshness_gate import FreshnessGate

LOG = logging.getLogger("mage_dbt.reuse")
RUN, REUSE, FULL_REFRESH = "run", "reuse", "full refresh"
SKIP_STALE, FAIL_STALE = "skip-stale", "fail"  # only_fresh_sources (mage_dbt.runs.freshness_gate)
NOT_RUN = ("reused", "skipped-stale", "not run")  # dbt_status of nodes dbt did not get
REUSED_STATE = "Reused"


@dataclass(frozen=True)
class Decision:
    """What happens to one dbt node in this run, and why."""

    block: str
    unique_id: str
    action: str  # RUN, REUSE, FULL_REFRESH, or (only_fresh_sources) SKIP_STALE, FAIL_STALE
    reason: str
    key: StateKey | None = None


class RunReuse:
    """Reuse decisions and records of one pipeline run (or of a plan of one)."""

    def __init__(self, settings: Any, pipeline: Any, context: Any, *, enabled: bool,
                 full_refresh_nodes: set[str] | None = None, planned_writes: dict[str, str] | None = None) -> None:
        self.settings, self.pipeline, self.context = settings, pipeline, context
        self.enabled = enabled
        loaded = pipeline.manifest
        everything = context.full_refresh and full_refresh_nodes is None
        self.refreshed = set(loaded.nodes) if everything else set(full_refresh_nodes or ())
        self._everything = everything
        self.planned_writes = planned_writes or {}  # plan: table -> block that would write it first
        self._target = None
        self._store: StateStore | None = None
        self._keys: dict[str, StateKey] = {}
        self._settled: set[str] = set()  # nodes this run leaves as they are (reused, skipped as stale)
        fresh = getattr(pipeline.spec, "only_fresh_sources", None)
        self.gate = FreshnessGate(pipeline, fresh.lag_seconds, fresh.on_error) if fresh else None

    # -- where -----------------------------------------------------------------------------------
    @property
    def target(self) -> Any:
        if self._target is None:
            from mage_dbt.warehouse.catalog import target_config

            self._target = target_config(self.pipeline.manifest.ref)
        return self._target

    @property
    def store(self) -> StateStore:
        if self._store is None:
            ref = self.pipeline.manifest.ref
            self._store = StateStore(state_dir(self.settings.data_dir, ref.name, self.target.target_name))
        return self._store

    # -- deciding --------------------------------------------------------------------------------
    def decide(self, ids: list[str]) -> dict[str, Decision]:
        """The decision for each of `ids` (dbt node ids of this pipeline)."""
        loaded = self.pipeline.manifest
        records = self.store.read()["nodes"]
        keys = self._compute(ids, records)
        self._keys.update(keys)
        names = self.pipeline.blocks_by_id
        out = {}
        for uid in ids:
            out[uid] = Decision(names[uid], uid, *self._why(uid, keys[uid], records.get(uid), loaded.nodes[uid]),
                                key=keys[uid])
        for uid, cause in self._below_refreshed(ids).items():
            if out[uid].action == REUSE:  # its key is the same, its upstream's data is not
                out[uid] = replace(out[uid], action=RUN, reason=f"upstream {cause} is rebuilt with --full-refresh")
        reusable = [uid for uid, d in out.items() if d.action == REUSE]
        for uid, relation in self._missing_relations(reusable).items():
            out[uid] = replace(out[uid], action=RUN, reason=f"its relation {relation} is not in the warehouse")
        if self.gate is not None:
            self._settled |= {uid for uid, d in out.items() if d.action == REUSE}
            for uid in self._in_dag_order(ids):
                decision = out[uid]
                if decision.action != RUN or uid in self.refreshed:
                    continue
                verdict = self.gate.verdict(uid, records.get(uid), dict(keys[uid].parts), self._settled)
                if verdict is not None and verdict[0] == "skip":
                    if keys[uid].key is None:  # it reads the clock, an env var, ...: when in doubt, run
                        continue
                    self._settled.add(uid)
                if verdict is not None:
                    out[uid] = replace(decision, action=SKIP_STALE if verdict[0] == "skip" else FAIL_STALE,
                                       reason=verdict[1])
        return out

    def _why(self, uid: str, key: StateKey, record: dict | None, node: Any) -> tuple[str, str]:
        if uid in self.refreshed:
            if node.is_incremental or node.resource_type == "snapshot":
                return FULL_REFRESH, "full refresh: rebuilt from scratch, never reused"
            return RUN, "full refresh run: nothing is reused"
        if self.context.retry_batches and uid in self.context.retry_batches:
            return RUN, "retry of failed microbatch batches"
        if key.key is None:
            return RUN, f"always runs: {key.reason}"
        if not self.enabled:
            return RUN, "reuse is off (pipeline setting reuse: / --reuse)"
        if record is None:
            return RUN, f"no successful build of it recorded on target {self.target.target_name}"
        if node.is_incremental:
            if key.key in (record.get("interval_keys") or ()):
                return REUSE, "already built this interval with the same code, config and upstream data"
            return RUN, diff_reason(key.parts, record.get("parts") or {})
        if key.key == record.get("key"):
            return REUSE, f"unchanged since its build of {str(record.get('built_at', '?'))[:19]}"
        return RUN, diff_reason(key.parts, record.get("parts") or {})

    def _in_dag_order(self, ids: list[str]) -> list[str]:
        import networkx as nx

        names = self.pipeline.blocks_by_id
        order = {name: i for i, name in enumerate(nx.topological_sort(self.pipeline.graph))}
        return sorted(ids, key=lambda uid: order.get(names[uid], 0))

    def _below_refreshed(self, ids: list[str]) -> dict[str, str]:
        """Of `ids`, those downstream of a node this run rebuilds with --full-refresh, with that node."""
        import networkx as nx

        if not self.refreshed or self._everything:  # a full refresh of everything reuses nothing anyway
            return {}
        blocks, graph = self.pipeline.blocks, self.pipeline.graph
        names = self.pipeline.blocks_by_id
        found: dict[str, str] = {}
        for name in sorted(names[u] for u in self.refreshed if u in names):
            for below in nx.descendants(graph, name):
                uid = blocks[below].unique_id
                if uid in ids:
                    found.setdefault(uid, name)
        return found

    def _compute(self, ids: list[str], records: dict[str, dict]) -> dict[str, StateKey]:
        loaded = self.pipeline.manifest
        manifest = loaded.view  # manifest.json: a run that reuses every node never imports dbt
        versions, doubts = self._source_versions(upstream_sources(manifest, ids))
        ref = loaded.ref
        identity = {k: v for k, v in self.target.fields.items()
                    if isinstance(v, (str, int, float, bool)) and not _secret(k)}
        project_file = (ref.project_dir / "dbt_project.yml").read_bytes()
        window = self.context.event_time
        inputs = KeyInputs(
            run_vars=self.context.dbt_vars(),
            interval=f"{self.context.interval.start.isoformat()}/{self.context.interval.end.isoformat()}",
            environment=environment_stamp(self.target.type, identity, project_file),
            built_here=frozenset(b.unique_id for b in self.pipeline.blocks.values() if b.unique_id),
            recorded={uid: r["key"] for uid, r in records.items() if r.get("key")},
            source_versions=versions, source_doubts=doubts,
            event_time=f"{window[0].isoformat()}/{window[1].isoformat()}" if window else None,
        )
        return KeyComputer(manifest, inputs).keys(ids)

    def _source_versions(self, source_ids: list[str]) -> tuple[dict[str, str], dict[str, str]]:
        """Data versions of sources: recorded writes by this project's blocks and max(loaded_at_field)."""
        if not source_ids:
            return {}, {}
        nodes = self.pipeline.manifest.nodes
        writes = self.store.read()["writes"]
        versions: dict[str, str] = {}
        doubts: dict[str, str] = {}
        queries, no_field = source_queries(self.pipeline.manifest.view, source_ids)
        read = self._query_versions(queries, doubts)
        for uid in source_ids:
            table = _table_of(nodes.get(uid))
            if table in self.planned_writes:
                doubts[uid] = f"source {table} is written by block {self.planned_writes[table]} in this run"
                continue
            parts = []
            if table in writes:
                parts.append(f"written {writes[table]['at']} by {writes[table]['block']}")
            if uid in read:
                parts.append(f"loaded_at {read[uid]}")
            if parts:
                versions[uid] = "; ".join(parts)
            else:
                doubts.setdefault(uid, no_field.get(uid) or f"source {table} has no data version")
        return versions, doubts

    def _query_versions(self, queries: dict[str, str], doubts: dict[str, str]) -> dict[str, str]:
        found = {}

        def read(conn: Any) -> None:
            for uid, sql in queries.items():
                try:
                    found[uid] = repr(tuple(self._fetch(conn, sql)[0] or ()))
                except Exception as exc:  # noqa: BLE001 - an unreadable source is untrusted, not a failed run
                    text = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
                    doubts[uid] = f"source {uid.split('.', 2)[-1]}: its loaded_at_field could not be read ({text})"

        if queries:
            self._with_connection(read)
        return found

    def _missing_relations(self, ids: list[str]) -> dict[str, str]:
        """Of `ids`, the models, seeds and snapshots whose relation is gone (dropped by hand, ...)."""
        nodes = self.pipeline.manifest.nodes
        wanted = {uid: ((nodes[uid].schema or "").lower(), (nodes[uid].alias or nodes[uid].name).lower())
                  for uid in ids if nodes[uid].resource_type in ("model", "seed", "snapshot")
                  and nodes[uid].materialized != "ephemeral"}
        if not wanted or self.target.type not in ("duckdb", "postgres"):
            return {}
        schemas = sorted({schema for schema, _ in wanted.values()})
        found: set[tuple[str, str]] = set()

        def read(conn: Any) -> None:
            marks = ", ".join(["?" if self.target.type == "duckdb" else "%s"] * len(schemas))
            sql = (f"select lower(table_schema), lower(table_name) from information_schema.tables "
                   f"where lower(table_schema) in ({marks})") if self.target.type == "duckdb" else (
                   f"select lower(n.nspname), lower(c.relname) from pg_class c join pg_namespace n "
                   f"on n.oid = c.relnamespace where lower(n.nspname) in ({marks})")
            found.update((str(a), str(b)) for a, b in self._fetch(conn, sql, schemas, every=True))

        self._with_connection(read)
        return {uid: ".".join(rel) for uid, rel in wanted.items() if rel not in found}

    def _with_connection(self, work: Any) -> None:
        from mage_dbt.warehouse.connections import connect_raw

        conn = connect_raw(self.target)  # closed before dbt runs (a DuckDB file takes one writer)
        try:
            work(conn)
        finally:
            conn.close()

    def _fetch(self, conn: Any, sql: str, params: list | None = None, every: bool = False) -> list:
        if self.target.type == "duckdb":
            cursor = conn.execute(sql, params or [])
            return cursor.fetchall() if every else [cursor.fetchone()]
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params or None)
                return cur.fetchall() if every else [cur.fetchone()]
        finally:
            conn.rollback()  # read only; a failed statement must not poison the next one

    # -- a dbt group of a run ----------------------------------------------------------------------
    def split(self, ids: list[str], summary: Any, reporter: Any) -> list[str]:
        """Report the reusable nodes of `ids` as Reused; return the ids dbt still has to run."""
        try:
            decisions = self.decide(ids)
        except Exception as exc:  # noqa: BLE001 - reuse must never break a run: then everything runs
            LOG.warning("reuse: could not compute state keys (%s); running every node", exc)
            return ids
        by_name = self.pipeline.blocks
        keep = []
        for uid in ids:
            decision = decisions[uid]
            block = by_name[decision.block]
            if decision.action not in (REUSE, SKIP_STALE, FAIL_STALE) or block.is_ephemeral:
                keep.append(uid)
                continue
            upstream = through_ephemeral(by_name, block.upstream)
            if decision.action == REUSE:
                message = f"reused: {decision.reason}"
                summary.results[block.name] = BlockResult(name=block.name, kind=block.kind, status=SUCCESS,
                                                          message=message, dbt_status="reused", unique_id=uid,
                                                          reused=True)
                if reporter:
                    reporter.reused(block.name, kind=block.kind, message=message, upstream=upstream)
            elif decision.action == SKIP_STALE:  # a success for its downstream, which decides for itself
                message = f"skipped: {decision.reason}"
                summary.results[block.name] = BlockResult(name=block.name, kind=block.kind, status=SUCCESS,
                                                          message=message, dbt_status="skipped-stale", unique_id=uid)
                if reporter:
                    reporter.skipped(block.name, kind=block.kind, reason=message)
            else:
                summary.results[block.name] = BlockResult(name=block.name, kind=block.kind, status=FAILED,
                                                          message=decision.reason, dbt_status="not run", unique_id=uid)
                if reporter:
                    reporter.started(block.name, kind=block.kind, upstream=upstream)
                    reporter.finished(block.name, ok=False, message=decision.reason)
        if all(by_name[self.pipeline.blocks_by_id[u]].is_ephemeral for u in keep):
            return []  # dbt only compiles ephemeral models into the models that run
        return keep

    def record(self, ids: list[str], summary: Any) -> None:
        """Record what dbt did with `ids`: keys of successful builds, forget failed ones."""
        builds, dropped, replaced = {}, [], set()
        nodes = self.pipeline.manifest.nodes
        for uid in ids:
            result = summary.results.get(self.pipeline.blocks_by_id[uid])
            if result is None or result.dbt_status in NOT_RUN:
                continue  # ephemeral (never built), or not run
            key = self._keys.get(uid)
            if result.status == SUCCESS and key is not None and key.key and result.dbt_status != "warn":
                builds[uid] = {"key": key.key, "parts": dict(key.parts), "incremental": nodes[uid].is_incremental}
                if uid in self.refreshed:
                    replaced.add(uid)  # a full refresh dropped the intervals built before
            elif result.status in (SUCCESS, FAILED, CANCELLED):
                dropped.append(uid)
        try:
            self.store.record_builds(builds, dropped, run_id=self.context.run_id, replace_intervals=replaced)
        except Exception as exc:  # noqa: BLE001
            LOG.warning("reuse: could not record the builds of this run (%s)", exc)

    def block_ran(self, block: Any, ok: bool, wrote: tuple[str, ...] = ()) -> None:
        """After a Python, SQL or dbt command block: record the tables it wrote (a Python block's
        `writes:`, a SQL block's `materialize:`), or forget what dbt built (a dbt command)."""
        try:
            if block.kind == "dbt_command":
                self.store.forget_all()
            else:  # a failed Python block may have written part of its tables: recorded all the same
                tables = set(wrote) | set(written_tables(self.pipeline, block) if block.kind == "python" else ())
                self.store.record_writes(sorted(tables), block=block.name, run_id=self.context.run_id)
        except Exception as exc:  # noqa: BLE001
            LOG.warning("reuse: could not record what block %s wrote (%s)", block.name, exc)

    def finish(self, summary: Any) -> None:
        """A run of the whole pipeline that succeeded leaves its manifest for slim runs (`--changed`)."""
        origin = self.pipeline.origin
        partial = origin is None or origin.only is not None or origin.select or self.context.defer_state
        if summary.ok and not summary.interrupted and not partial:
            try:
                self.store.keep_manifest(self.pipeline.manifest.manifest_json)
            except Exception as exc:  # noqa: BLE001
                LOG.warning("could not keep the manifest of this run (%s)", exc)


def written_tables(pipeline: Any, block: Any) -> list[str]:
    """"schema.table" of every table a Python block declares in `writes:`."""
    from mage_dbt.blocks.edges import declared_writes

    loaded = pipeline.manifest
    keys = declared_writes(block.spec, loaded.nodes, loaded.ref.name, pipeline.name)
    return sorted(f"{schema}.{table}" for schema, table in keys)


def _table_of(node: Any) -> str:
    return f"{(node.schema or '').lower()}.{(node.alias or node.name).lower()}" if node is not None else "?"


def _secret(key: str) -> bool:
    from mage_dbt.warehouse.profile import is_secret_key

    return is_secret_key(str(key))
