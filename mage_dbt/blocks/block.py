"""Blocks: the units a pipeline is made of, and the one translator from dbt node to block.

A block is a named piece of work with upstream blocks. dbt nodes become blocks of kind
`dbt_model`, `dbt_seed`, `dbt_snapshot` or `dbt_test`; pipeline files add `python`, `sql` and
`dbt_command` blocks. Override `DbtBlockTranslator` in one place to change how nodes are named.

Ephemeral models are blocks too (kind `dbt_model`, `materialized="ephemeral"`), so the DAG keeps
their edges, but dbt never runs them: it compiles each one into the models that ref it. The helpers
at the bottom resolve edges through them (`through_ephemeral`) and name where one ends up
(`compiled_into`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from mage_dbt.dbt.nodes import DbtNode
from mage_dbt.pipelines.spec import BlockSpec

DBT_KINDS = ("dbt_model", "dbt_seed", "dbt_snapshot", "dbt_test")


@dataclass(frozen=True)
class Block:
    """One node of a pipeline DAG."""

    name: str
    kind: str
    upstream: tuple[str, ...] = ()
    unique_id: str | None = None
    dbt_project: str | None = None
    spec: BlockSpec | None = None
    materialized: str | None = None  # dbt nodes: the node's materialization

    @property
    def is_dbt_node(self) -> bool:
        return self.kind in DBT_KINDS

    @property
    def is_ephemeral(self) -> bool:
        """An ephemeral dbt model: compiled into the models that ref it, never run on its own."""
        return self.kind == "dbt_model" and self.materialized == "ephemeral"


class DbtBlockTranslator:
    """Turns manifest nodes into blocks. Subclass and pass to `build_pipeline` to customise."""

    def kind(self, node: DbtNode) -> str:
        return f"dbt_{node.resource_type}"

    def block_name(self, node: DbtNode, taken: set[str]) -> str:
        """The node's own name, or its unique id when two selected nodes share a name."""
        return node.name if node.name not in taken else node.unique_id

    def blocks(self, nodes: Iterable[DbtNode], project: str) -> dict[str, Block]:
        """One block per node; upstreams are the node's selected `depends_on` parents."""
        ordered = sorted(nodes, key=lambda n: n.unique_id)
        names: dict[str, str] = {}
        seen: set[str] = set()
        duplicates = {n.name for n in ordered if n.name in seen or seen.add(n.name)}
        for node in ordered:
            names[node.unique_id] = self.block_name(node, duplicates)
        out: dict[str, Block] = {}
        for node in ordered:
            upstream = tuple(names[d] for d in node.depends_on if d in names)
            out[names[node.unique_id]] = Block(
                name=names[node.unique_id],
                kind=self.kind(node),
                upstream=upstream,
                unique_id=node.unique_id,
                dbt_project=project,
                materialized=node.materialized,
            )
        return out


def through_ephemeral(blocks: Mapping[str, Block], names: Iterable[str]) -> tuple[str, ...]:
    """`names` with every ephemeral block replaced by its own upstreams (recursively): the blocks
    that really run before a block whose upstreams are `names`."""
    out: dict[str, None] = {}
    todo, seen = list(names), set()
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        block = blocks.get(name)
        if block is not None and block.is_ephemeral:
            todo.extend(block.upstream)
        else:
            out[name] = None
    return tuple(out)


def compiled_into(blocks: Mapping[str, Block], name: str) -> tuple[str, ...]:
    """The dbt blocks an ephemeral block ends up inside: its downstream dbt blocks, looking through
    the ephemeral ones (dbt inlines an ephemeral model that refs another one, and so on)."""
    children: dict[str, list[str]] = {}
    for block in blocks.values():
        for up in block.upstream:
            children.setdefault(up, []).append(block.name)
    out: set[str] = set()
    todo, seen = list(children.get(name, ())), {name}
    while todo:
        child = todo.pop()
        if child in seen:
            continue
        seen.add(child)
        if not blocks[child].is_dbt_node:
            continue  # a Python/SQL/command block only runs after it
        if blocks[child].is_ephemeral:
            todo.extend(children.get(child, ()))
        else:
            out.add(child)
    return tuple(sorted(out))
