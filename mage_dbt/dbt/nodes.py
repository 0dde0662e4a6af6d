"""Typed, frozen records for the dbt manifest nodes mage_dbt turns into blocks.

`DbtNode` holds what orchestration needs from a manifest node (identity, dependencies, relation,
materialization) and nothing else, so node indexes are small, cheap to cache and safe to share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

# Resource types that become blocks, in the order dbt would usually run them.
BLOCK_RESOURCE_TYPES = ("seed", "snapshot", "model", "test")


@dataclass(frozen=True, slots=True)
class DbtNode:
    """One manifest node (model, seed, snapshot, test) or source."""

    unique_id: str
    name: str
    resource_type: str
    package_name: str
    original_file_path: str
    fqn: tuple[str, ...]
    depends_on: tuple[str, ...]
    materialized: str | None = None
    incremental_strategy: str | None = None
    unique_key: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    database: str | None = None
    schema: str | None = None
    alias: str | None = None
    relation_name: str | None = None
    attached_node: str | None = None
    # Microbatch models (incremental_strategy: microbatch) and the upstreams they filter by time.
    event_time: str | None = None
    batch_size: str | None = None
    begin: str | None = None
    # What the Prefect UI shows about the node (assets, the run summary): manifest description and
    # owner (meta.owner, else its group's owner), dbt's `path` (where compiled SQL is written), and
    # for tests with store_failures, the relation holding the failing rows (`relation_name`).
    description: str | None = None
    owner: str | None = None
    path: str | None = None
    store_failures: bool = False

    @property
    def is_microbatch(self) -> bool:
        return self.is_incremental and self.incremental_strategy == "microbatch"

    @property
    def is_incremental(self) -> bool:
        return self.resource_type == "model" and self.materialized == "incremental"

    @property
    def selector(self) -> str:
        """A dbt FQN selector matching exactly this node."""
        return ".".join(self.fqn)


def _as_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _owner(raw: Mapping[str, Any], groups: Mapping[str, Any]) -> str | None:
    """meta.owner (node or config meta), else the owner of the node's dbt group (name or email)."""
    for meta in (raw.get("meta") or {}, (raw.get("config") or {}).get("meta") or {}):
        if meta.get("owner"):
            return str(meta["owner"])
    group = groups.get(f"group.{raw.get('package_name')}.{raw.get('group')}") if raw.get("group") else None
    owner = (group or {}).get("owner") or {}
    return owner.get("name") or owner.get("email") or None


def node_from_manifest(raw: Mapping[str, Any], groups: Mapping[str, Any] | None = None) -> DbtNode:
    """Build a `DbtNode` from one entry of manifest.json's `nodes` or `sources`."""
    config = raw.get("config") or {}
    depends = (raw.get("depends_on") or {}).get("nodes") or ()
    return DbtNode(
        unique_id=raw["unique_id"],
        name=raw["name"],
        resource_type=raw["resource_type"],
        package_name=raw["package_name"],
        original_file_path=raw.get("original_file_path", ""),
        fqn=tuple(raw.get("fqn") or ()),
        depends_on=tuple(dict.fromkeys(depends)),
        materialized=config.get("materialized"),
        incremental_strategy=config.get("incremental_strategy"),
        unique_key=_as_tuple(config.get("unique_key")),
        tags=_as_tuple(raw.get("tags")),
        database=raw.get("database"),
        schema=raw.get("schema"),
        alias=raw.get("alias") or raw.get("identifier"),
        relation_name=raw.get("relation_name"),
        attached_node=raw.get("attached_node"),
        event_time=config.get("event_time"),
        batch_size=config.get("batch_size"),
        begin=str(config["begin"]) if config.get("begin") is not None else None,
        description=(raw.get("description") or "").strip() or None,
        owner=_owner(raw, groups or {}),
        path=raw.get("path"),
        store_failures=bool(config.get("store_failures")),
    )


def nodes_from_manifest_dict(manifest: Mapping[str, Any]) -> dict[str, DbtNode]:
    """Index the block-relevant nodes and all sources of a manifest.json document."""
    index: dict[str, DbtNode] = {}
    groups = manifest.get("groups") or {}
    for raw in manifest.get("nodes", {}).values():
        if raw.get("resource_type") in BLOCK_RESOURCE_TYPES:
            index[raw["unique_id"]] = node_from_manifest(raw, groups)
    for raw in manifest.get("sources", {}).values():
        index[raw["unique_id"]] = node_from_manifest(raw, groups)
    return index


def block_nodes(nodes: Iterable[DbtNode]) -> list[DbtNode]:
    """The nodes that become blocks (sources do not)."""
    return [n for n in nodes if n.resource_type in BLOCK_RESOURCE_TYPES]
