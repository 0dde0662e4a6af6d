"""Blocks: the units a pipeline is made of, and the one translator from dbt node to block.

A block is a named piece of work with upstream blocks. dbt nodes become blocks of kind
`dbt_model`, `dbt_seed`, `dbt_snapshot` or `dbt_test`; pipeline files add `python`, `sql` and
`dbt_command` blocks. Override `DbtBlockTranslator` in one place to change how nodes are named.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from mage_dbt.nodes import DbtNode
from mage_dbt.pipeline_spec import BlockSpec

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

    @property
    def is_dbt_node(self) -> bool:
        return self.kind in DBT_KINDS


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
            )
        return out
