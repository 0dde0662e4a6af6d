"""Edges inferred between Python/SQL blocks and dbt relations, and the pre-flight check of blocks.

Explicit `upstream:` always counts. On top of it:

* a block that writes a table declared as a dbt source becomes upstream of the pipeline's dbt
  nodes depending on that source (models and source tests). Python blocks declare what they write
  in the pipeline file, `writes: [schema.table]` or `writes: [source:src.table]`; a SQL block with
  `materialize:` writes its relation;
* a SQL block that reads a dbt model's (seed's, snapshot's) relation becomes downstream of that
  node: the tables are found by sqlglot in the rendered SQL (a `ref()` counts as well);
* a SQL block reading a table another Python/SQL block writes becomes downstream of that block.

Tables are compared as (schema, table), case-insensitively. Inferring edges needs every Python
and SQL block file read and parsed, so this is also where bad block files fail, before any run:
no decorated function, a signature that cannot take the upstream outputs, SQL that does not
parse, `ref()` to a missing model, or a block writing a dbt model's own relation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mage_dbt.blocks.python import check_python_block
from mage_dbt.blocks.support import RELATION_TYPES, Relations, target_for_ref
from mage_dbt.errors import BlockError
from mage_dbt.pipelines.spec import dbt_project_ref

TableKey = tuple[str, str]


@dataclass
class BlockIO:
    """What one Python/SQL block reads and writes, as (schema, table) keys."""

    name: str
    writes: set[TableKey] = field(default_factory=set)
    reads: set[TableKey] = field(default_factory=set)
    read_nodes: set[str] = field(default_factory=set)  # unique ids reached through ref()


def node_key(node: Any) -> TableKey | None:
    if not node.schema:
        return None
    return (node.schema.lower(), (node.alias or node.name).lower())


def infer_edges(settings: Any, spec: Any, blocks: dict[str, Any], loaded: Any,
                target: str | None = None) -> set[tuple[str, str]]:
    """(upstream, downstream) pairs to add to the pipeline graph (checks every block file).

    `target` is the run's dbt target; it only matters for pipelines without a `dbt:` section
    (otherwise the manifest's own target is used)."""
    io = analyse_blocks(settings, spec, blocks, loaded, target)
    return edges_from(io, blocks, loaded.nodes if loaded is not None else {})


def analyse_blocks(settings: Any, spec: Any, blocks: dict[str, Any], loaded: Any,
                   target_name: str | None = None) -> dict[str, BlockIO]:
    nodes = loaded.nodes if loaded is not None else {}
    project = loaded.ref.name if loaded is not None else None
    target = _LazyTargetInfo(settings, spec, loaded, target_name)
    result: dict[str, BlockIO] = {}
    for name, block in blocks.items():
        if block.kind == "python":
            check_python_block(settings, spec.name, block.spec)
            result[name] = BlockIO(name, writes=declared_writes(block.spec, nodes, project, spec.name))
        elif block.kind == "sql":
            result[name] = _sql_io(settings, spec, block, nodes, project, target)
    for io in result.values():
        _refuse_model_writes(io, nodes, spec.name)
    return result


def _sql_io(settings, spec, block, nodes, project, target) -> BlockIO:
    from mage_dbt.blocks.sql import compile_block, preflight_values  # local: sqlglot only when needed

    info = target.get()
    compiled = compile_block(settings, spec.name, block.spec, target=info,
                             values=preflight_values(spec, target.name), nodes=nodes,
                             project=project, preflight=True)
    used = {uid for uid, node in compiled.used.items() if node.resource_type in RELATION_TYPES}
    return BlockIO(block.name, writes=compiled.writes(), reads=compiled.reads(), read_nodes=used)


class _LazyTargetInfo:
    """The target's dialect/schema, rendered from the profile only when a SQL block needs it."""

    def __init__(self, settings: Any, spec: Any, loaded: Any, target: str | None) -> None:
        self.settings, self.spec, self.loaded, self.target = settings, spec, loaded, target
        self._info = None
        self.name: str | None = None

    def get(self) -> Any:
        if self._info is None:
            from mage_dbt.blocks.sql import target_info  # local: sqlglot only for pipelines with SQL blocks

            ref = self.loaded.ref if self.loaded is not None else dbt_project_ref(self.settings, self.spec, self.target)
            target = target_for_ref(ref)
            self._info, self.name = target_info(target), target.target_name
        return self._info


def declared_writes(block_spec: Any, nodes: dict[str, Any], project: str | None, pipeline: str) -> set[TableKey]:
    """The `writes:` of a Python block as (schema, table) keys."""
    raw = block_spec.option("writes") or []
    if isinstance(raw, str):
        raw = [raw]
    label = f"block '{block_spec.name}' (flows/{pipeline}.yaml)"
    keys: set[TableKey] = set()
    for item in raw:
        text = str(item).strip()
        if text.startswith("source:"):
            parts = text[len("source:"):].split(".")
            if len(parts) != 2 or not all(parts):
                raise BlockError(f"{label}: writes entry '{text}' is not source:<source>.<table>")
            try:
                relation = Relations(nodes, project).source(parts[0], parts[1])
            except BlockError as exc:
                raise BlockError(f"{label}: writes {exc.message}", hint=exc.hint) from None
            keys.add((str(relation.schema).lower(), relation.table.lower()))
        else:
            parts = text.split(".")
            if len(parts) != 2 or not all(parts):
                raise BlockError(f"{label}: writes entry '{text}' is not <schema>.<table> or "
                                 f"source:<source>.<table>")
            keys.add((parts[0].lower(), parts[1].lower()))
    return keys


def _refuse_model_writes(io: BlockIO, nodes: dict[str, Any], pipeline: str) -> None:
    owned = {node_key(n): n for n in nodes.values() if n.resource_type in RELATION_TYPES and node_key(n)}
    for key in io.writes:
        if key in owned:
            node = owned[key]
            raise BlockError(
                f"block '{io.name}' (pipeline '{pipeline}') writes {'.'.join(key)}, the relation of "
                f"dbt {node.resource_type} '{node.name}'",
                hint="write to another table (declare it as a dbt source to feed models)")


def edges_from(io: dict[str, BlockIO], blocks: dict[str, Any], nodes: dict[str, Any]) -> set[tuple[str, str]]:
    """The inferred edges, from what each block reads and writes."""
    block_of = {b.unique_id: name for name, b in blocks.items() if b.unique_id}
    sources_by_key: dict[TableKey, set[str]] = {}
    relations_by_key: dict[TableKey, set[str]] = {}
    for node in nodes.values():
        key = node_key(node)
        if key is None:
            continue
        if node.resource_type == "source":
            sources_by_key.setdefault(key, set()).add(node.unique_id)
        elif node.resource_type in RELATION_TYPES and node.unique_id in block_of:
            relations_by_key.setdefault(key, set()).add(block_of[node.unique_id])
    readers_of_source = _source_readers(blocks, nodes)
    edges: set[tuple[str, str]] = set()
    for writer in io.values():
        for key in writer.writes:
            for source_id in sources_by_key.get(key, ()):
                edges.update((writer.name, reader) for reader in readers_of_source.get(source_id, ()))
            edges.update((writer.name, other.name) for other in io.values()
                         if other.name != writer.name and key in other.reads)
    for reader in io.values():
        for key in reader.reads:
            edges.update((up, reader.name) for up in relations_by_key.get(key, ()))
        edges.update((block_of[uid], reader.name) for uid in reader.read_nodes if uid in block_of)
    return {(up, down) for up, down in edges if up != down}


def _source_readers(blocks: dict[str, Any], nodes: dict[str, Any]) -> dict[str, set[str]]:
    """source unique id -> pipeline dbt blocks depending on it."""
    readers: dict[str, set[str]] = {}
    for name, block in blocks.items():
        node = nodes.get(block.unique_id) if block.unique_id else None
        for dep in (node.depends_on if node else ()):
            if dep.startswith("source."):
                readers.setdefault(dep, set()).add(name)
    return readers

