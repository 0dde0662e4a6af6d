"""Drift detection: does an incremental model's current SQL still produce its table's columns?

For every incremental model whose relation exists, the model is compiled by dbt (one in-process
`dbt compile` over the cached manifest, with the run's vars, so `is_incremental()` renders as the
next run would) and the warehouse is asked for the compiled query's columns WITHOUT running it:
DuckDB binds the query (`connection.sql(q).types`; a relation is lazy until fetched), Postgres
defines it as a temporary view in a transaction that is rolled back and reads `format_type` of the
view's columns. The existing relation's columns come from the same catalog, and the two sides are
compared with normalized types (varchar/text, int4/integer, decimal/numeric, ...), names
case-insensitively and column order ignored (dbt's incremental insert is by column name). The
query's columns are cached per process by project revision, target, model and user vars (they do
not depend on the execution date), so a backfill compiles each model once, not once per date.

`enforce_on_drift` applies a pipeline's `on_drift` setting before a run: `fail` (default) stops the
run before anything ran and names the exact `mage-dbt full-refresh` command, `full_refresh`
rebuilds the drifted models in that run, `warn` logs and runs. The warehouse side (column lookups
without running the query) is `mage_dbt.warehouse.catalog`.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from mage_dbt.context import RunContext
from mage_dbt.dbt.manifest import DbtProjectRef, LoadedManifest
from mage_dbt.errors import MageDbtError
from mage_dbt.pipelines.pipeline import Pipeline
from mage_dbt.refresh.full_refresh import incremental_models, refresh_ids_for_run
from mage_dbt.warehouse.catalog import Catalog, Columns, ProbeError, UnsupportedWarehouse

UP_TO_DATE, DRIFTED, NOT_BUILT, UNKNOWN = "up to date", "drifted", "not built", "unknown"


class DriftError(MageDbtError):
    """Selected incremental models no longer match their tables; `node_ids` names them."""


@dataclass(frozen=True)
class ModelDrift:
    """One incremental model's state: up to date, drifted (with the column differences), not built."""

    block: str
    unique_id: str
    relation: str
    status: str
    added: tuple[tuple[str, str], ...] = ()
    removed: tuple[tuple[str, str], ...] = ()
    changed: tuple[tuple[str, str, str], ...] = ()
    problem: str | None = None

    def describe(self) -> str:
        if self.status == UNKNOWN:
            return self.problem or "could not be checked"
        parts = []
        if self.added:
            parts.append("added " + ", ".join(f"{n} ({t})" for n, t in self.added))
        if self.removed:
            parts.append("removed " + ", ".join(f"{n} ({t})" for n, t in self.removed))
        if self.changed:
            parts.append("type changed " + ", ".join(f"{n} ({old} -> {new})" for n, old, new in self.changed))
        return "; ".join(parts)


# -- type normalization -------------------------------------------------------------------------
_ALIASES = {
    "character varying": "text", "varchar": "text", "character": "text", "char": "text",
    "bpchar": "text", "string": "text", "nvarchar": "text", "citext": "text",
    "int": "integer", "int4": "integer", "signed": "integer",
    "int8": "bigint", "long": "bigint", "int2": "smallint", "short": "smallint",
    "int1": "tinyint", "float8": "double", "double precision": "double", "float4": "real",
    "bool": "boolean", "logical": "boolean", "decimal": "numeric",
    "timestamp without time zone": "timestamp", "datetime": "timestamp",
    "timestamp with time zone": "timestamptz", "time without time zone": "time",
    "time with time zone": "timetz", "bytea": "blob", "binary": "blob", "varbinary": "blob",
}
_STRING_TYPES = {"text"}
_PARAMS = re.compile(r"^(?P<base>[a-z][a-z0-9_ ]*?)\s*(?:\((?P<args>[^)]*)\))?(?P<rest>\s*\[\])?$")


def normalize_type(raw: str) -> str:
    """One spelling per type: `VARCHAR(20)`, `character varying` -> text; `DECIMAL(12,2)` -> numeric(12,2)."""
    text = " ".join(str(raw).lower().replace('"', "").split())
    match = _PARAMS.match(text)
    if not match:
        return text
    base = _ALIASES.get(match["base"], match["base"])
    args = (match["args"] or "").replace(" ", "")
    if base in _STRING_TYPES:
        args = ""  # dbt widens string lengths itself; only the kind of type matters here
    return f"{base}({args})" if args else base + (match["rest"] or "").strip()


def compare_columns(table: Columns, query: Columns) -> tuple[tuple, tuple, tuple]:
    """(added, removed, type-changed) columns of `query` relative to `table`."""
    old = {name.lower(): (name, typ) for name, typ in table.items()}
    new = {name.lower(): (name, typ) for name, typ in query.items()}
    added = tuple((new[k][0], new[k][1]) for k in new if k not in old)
    removed = tuple((old[k][0], old[k][1]) for k in old if k not in new)
    changed = tuple(
        (new[k][0], old[k][1], new[k][1]) for k in new
        if k in old and normalize_type(old[k][1]) != normalize_type(new[k][1])
    )
    return added, removed, changed


# -- compile with dbt ---------------------------------------------------------------------------
def compile_models(
    loaded: LoadedManifest, unique_ids: Sequence[str], context: RunContext
) -> dict[str, tuple[str | None, str | None]]:
    """unique_id -> (compiled SQL, error message) from ONE in-process `dbt compile` on the cached manifest."""
    from mage_dbt.dbt.executor import node_args
    from mage_dbt.dbt.invocation import error_text, invoke_dbt

    ref = loaded.ref
    raw = invoke_dbt(
        [
            "compile", *ref.base_args(), *node_args(loaded, unique_ids),
            "--vars", json.dumps(context.dbt_vars(), default=str),
            "--log-level", "none", "--no-use-colors",
        ],
        manifest=loaded.dbt_manifest,
        invocation_log=ref.invocation_log,
        node_count=len(unique_ids),
    )
    out: dict[str, tuple[str | None, str | None]] = {}
    for item in getattr(getattr(raw, "result", None), "results", None) or ():
        uid = item.node.unique_id
        code = getattr(item.node, "compiled_code", None)
        ok = str(getattr(item.status, "value", item.status)).lower() == "success" and code
        out[uid] = (code, None) if ok else (None, " ".join(str(item.message or "compile failed").split()))
    problem = error_text(raw) or "dbt did not compile this model"
    for uid in unique_ids:
        out.setdefault(uid, (None, problem))
    return out


# (project revision, target, node, user vars) -> the columns its SQL produces. A model's columns do
# not change with the execution date, so a backfill compiles each model once per process, not per date.
_QUERY_COLUMNS: dict[tuple[str, str | None, str, str], Columns] = {}


def detect_drift(pipeline: Pipeline, context: RunContext, names: Sequence[str] | None = None) -> list[ModelDrift]:
    """The drift state of the pipeline's incremental models (or of `names`), in name order."""
    loaded, ref = pipeline.manifest, pipeline.dbt_ref
    if loaded is None or ref is None:
        return []
    names = sorted(names if names is not None else incremental_models(pipeline))
    nodes = {n: loaded.nodes[pipeline.blocks[n].unique_id] for n in names}  # type: ignore[index]
    with Catalog.open(ref) as catalog:
        tables = {n: catalog.relation_columns(node.database, node.schema, node.alias) for n, node in nodes.items()}
    built = [n for n in names if tables[n] is not None]
    vars_key = json.dumps({k: v for k, v in context.vars.items()}, sort_keys=True, default=str)
    keys = {n: (loaded.key, ref.target, nodes[n].unique_id, vars_key) for n in built}
    _QUERY_COLUMNS.update(_load_disk_cache(ref, loaded.key))
    todo = [n for n in built if keys[n] not in _QUERY_COLUMNS]
    compiled = compile_models(loaded, [nodes[n].unique_id for n in todo], context) if todo else {}
    states: list[ModelDrift] = []
    with Catalog.open(ref) if todo else _nothing() as catalog:
        for name in names:
            node = nodes[name]
            base = dict(block=name, unique_id=node.unique_id, relation=node.relation_name or node.alias or name)
            if tables[name] is None:
                states.append(ModelDrift(status=NOT_BUILT, **base))
                continue
            query = _QUERY_COLUMNS.get(keys[name])
            if query is None:
                sql, problem = compiled[node.unique_id]
                if sql is None:
                    states.append(ModelDrift(status=UNKNOWN, problem=f"does not compile: {problem}", **base))
                    continue
                try:
                    query = catalog.query_columns(sql)
                except ProbeError as exc:
                    states.append(ModelDrift(status=UNKNOWN, problem=f"the warehouse rejects its SQL: {exc}", **base))
                    continue
                _QUERY_COLUMNS[keys[name]] = query
            added, removed, changed = compare_columns(tables[name], query)  # type: ignore[arg-type]
            status = DRIFTED if (added or removed or changed) else UP_TO_DATE
            states.append(ModelDrift(status=status, added=added, removed=removed, changed=changed, **base))
    if todo:
        _save_disk_cache(ref, loaded.key)
    return states


def _disk_cache_file(ref: DbtProjectRef, key: str) -> Path:
    return ref.data_dir / "drift_cache" / f"{ref.name}-{ref.target or 'default'}-{key}.json"


def _load_disk_cache(ref: DbtProjectRef, key: str) -> dict:
    """Query columns found by earlier processes for this project revision and target.

    A model's query columns change only with its SQL (the manifest key) or its upstream
    relations, and models are built from the same revision; only a source table changing shape
    outside dbt goes unnoticed until the next revision: the price of not compiling every run.
    """
    try:
        raw = json.loads(_disk_cache_file(ref, key).read_text())
    except (OSError, ValueError):
        return {}
    return {(key, ref.target, item["unique_id"], item["vars"]): dict(item["columns"]) for item in raw}


def _save_disk_cache(ref: DbtProjectRef, key: str) -> None:
    items = [
        {"unique_id": uid, "vars": vars_key, "columns": list(columns.items())}
        for (k, target, uid, vars_key), columns in _QUERY_COLUMNS.items()
        if k == key and target == ref.target
    ]
    path = _disk_cache_file(ref, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(items))
    os.replace(tmp, path)


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


# -- the on_drift policy ------------------------------------------------------------------------
def fix_command(pipeline: Pipeline, names: Sequence[str], date: str | None = None) -> str:
    """The exact CLI command that rebuilds `names` of `pipeline` (for `date` when they read the
    run's dates: a dateless full refresh of those is refused, mage_dbt.refresh.date_reads)."""
    from mage_dbt.refresh.date_reads import date_reading_blocks

    command = f"mage-dbt full-refresh {pipeline.name}" + "".join(f" --select {n}" for n in names)
    if date and date_reading_blocks(pipeline, names):
        command += f" -d {date}"
    target = pipeline.dbt_ref.target if pipeline.dbt_ref else None
    if target and target != pipeline.spec.target:
        command += f" --target {target}"
    return command


def enforce_on_drift(
    pipeline: Pipeline, context: RunContext, refresh_ids: set[str] | None, logger: Any
) -> set[str] | None:
    """Check the run's incremental models that are not being rebuilt and apply `on_drift`.

    Returns the node ids the run must rebuild (None: the run's own full_refresh flag applies to all).
    """
    if context.full_refresh and refresh_ids is None:
        return None  # every node is rebuilt anyway
    skip = refresh_ids or set()
    candidates = [n for n in incremental_models(pipeline) if pipeline.blocks[n].unique_id not in skip]
    if not candidates:
        return refresh_ids
    try:
        states = detect_drift(pipeline, context, candidates)
    except UnsupportedWarehouse as exc:
        logger.warning("drift check skipped: %s", exc.one_line())
        return refresh_ids
    for state in states:
        if state.status == UNKNOWN:
            logger.warning("drift check of %s: %s", state.block, state.problem)
    drifted = [s for s in states if s.status == DRIFTED]
    if not drifted:
        return refresh_ids
    names = [s.block for s in drifted]
    detail = "; ".join(f"{s.block}: {s.describe()}" for s in drifted)
    policy = pipeline.spec.on_drift
    if context.run_id != "preflight":  # `notify: {on: [drift_found]}` (deploy/alerts.py)
        from mage_dbt.runs.pipeline_events import DRIFT_FOUND, emit_pipeline_event

        when = context.date_vars()["execution_date"]
        emit_pipeline_event(DRIFT_FOUND, pipeline.name, {
            "execution_date": when, "message": f"drift found ({detail}); on_drift: {policy}",
            "next": fix_command(pipeline, names, when)}, None if context.run_id == "local" else context.run_id)
    if policy == "fail":
        raise DriftError(
            f"pipeline '{pipeline.name}': incremental model{'s' if len(names) > 1 else ''} "
            f"{', '.join(names)} no longer match{'' if len(names) > 1 else 'es'} the existing table ({detail}); "
            f"nothing ran",
            hint=f"rebuild with `{fix_command(pipeline, names, context.date_vars()['execution_date'])}` (mage-dbt rebuild refills its history), "
            f"or set on_drift: full_refresh or warn in flows/{pipeline.name}.yaml",
            node_ids=[s.unique_id for s in drifted],
        )
    if policy == "warn":
        logger.warning("on_drift: warn — running despite drift (%s)", detail)
        return refresh_ids
    logger.warning("on_drift: full_refresh — rebuilding %s in this run (%s)", ", ".join(names), detail)
    return set(skip) | {s.unique_id for s in drifted}


def plan_run_refresh(
    pipeline: Pipeline,
    context: RunContext,
    full_refresh_select: Sequence[str] | None,
    *,
    check_drift: bool = True,
    logger: Any,
) -> set[str] | None:
    """What a run rebuilds: its full_refresh_select, then its on_drift policy (None: full_refresh for all)."""
    refresh = refresh_ids_for_run(pipeline, context.full_refresh, full_refresh_select)
    if check_drift:
        refresh = enforce_on_drift(pipeline, context, refresh, logger)
    if refresh:
        names = sorted(n for n, b in pipeline.blocks.items() if b.unique_id in refresh)
        logger.info("full refresh (--full-refresh) of %s; the other blocks run normally", ", ".join(names))
    return refresh
