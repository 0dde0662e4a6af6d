"""Pipelines: a pipeline file plus a manifest become a validated DAG of blocks and execution units.

Edges come from the manifest's `depends_on`, from explicit `upstream:` and from inference between
Python/SQL blocks and dbt relations (`mage_dbt.blocks.edges`). Consecutive dbt blocks of one dbt project
that form a connected part of the DAG are grouped into one *unit*, which runs as ONE dbt
invocation; every other block is a unit of its own. Units are returned in an executable order.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import networkx as nx

from mage_dbt.blocks.block import Block, DbtBlockTranslator
from mage_dbt.blocks.dbt_command import check_dbt_command_blocks
from mage_dbt.blocks.edges import BlockIO, analyse_blocks, edges_from
from mage_dbt.context import run_dbt_vars
from mage_dbt.dbt.manifest import DbtProjectRef, LoadedManifest, load_manifest
from mage_dbt.errors import ConfigError, SelectionError
from mage_dbt.pipelines.run_policies import DEFAULT_POLICY, RunPolicy, resolve_policies
from mage_dbt.pipelines.spec import PipelineSpec, dbt_project_ref, load_pipeline_spec, pipeline_path, where_in_file
from mage_dbt.settings import ProjectSettings

MODEL_ONLY_TYPES = ("model",)


@dataclass(frozen=True)
class Unit:
    """What the runner executes in one step: a dbt group or a single non-dbt block."""

    id: str
    kind: str  # "dbt_group" or the block kind
    blocks: tuple[str, ...]
    dbt_project: str | None = None


@dataclass(frozen=True)
class PipelineOrigin:
    """How a pipeline was resolved, so it can be resolved again for other dbt vars."""

    settings: ProjectSettings
    target: str | None
    select: tuple[str, ...] | None
    translator: DbtBlockTranslator | None
    dbt_ref: DbtProjectRef | None
    only: frozenset[str] | None = None  # the block names `restrict` kept


@dataclass
class Pipeline:
    """A resolved pipeline: its spec, blocks, DAG, units and the manifest it was built from."""

    spec: PipelineSpec
    blocks: dict[str, Block]
    graph: nx.DiGraph
    units: list[Unit]
    manifest: LoadedManifest | None = None
    dbt_ref: DbtProjectRef | None = None
    unit_of: dict[str, str] = field(default_factory=dict)
    origin: PipelineOrigin | None = None
    policies: dict[str, RunPolicy] = field(default_factory=dict)  # blocks with retries or a timeout
    # Python/SQL blocks: the (schema, table) keys they write and read (blocks/edges.py), for assets.
    block_io: dict[str, BlockIO] = field(default_factory=dict)

    def policy(self, name: str) -> RunPolicy:
        """The effective run policy of block `name` (mage_dbt.pipelines.run_policies)."""
        return self.policies.get(name, DEFAULT_POLICY)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def blocks_by_id(self) -> dict[str, str]:
        """dbt unique id -> block name, for the dbt blocks of this pipeline."""
        return {b.unique_id: n for n, b in self.blocks.items() if b.unique_id}

    @property
    def microbatch_blocks(self) -> set[str]:
        """The blocks that are dbt microbatch models (dbt runs them in event-time batches)."""
        nodes = self.manifest.nodes if self.manifest is not None else {}
        return {n for n, b in self.blocks.items() if b.unique_id in nodes and nodes[b.unique_id].is_microbatch}

    def downstream_of(self, names: set[str]) -> set[str]:
        out: set[str] = set()
        for name in names:
            out |= nx.descendants(self.graph, name)
        return out


def load_pipeline(
    settings: ProjectSettings,
    name: str,
    *,
    target: str | None = None,
    select: list[str] | None = None,
    translator: DbtBlockTranslator | None = None,
    dbt_ref: DbtProjectRef | None = None,
    dbt_vars: dict[str, Any] | None = None,
) -> Pipeline:
    """Read `flows/<name>.yaml` and resolve it against the (cached) manifest.

    `dbt_vars`: the `--vars` of the run this is for (`RunContext.dbt_vars()`), so that vars that
    change what dbt parses (enabled models, refs in `{% if var(...) %}`) give dbt's node set; by
    default the pipeline's own `vars:`, as a `dbt ls` without the run's date would see them.
    """
    spec = load_pipeline_spec(settings.flows_dir, name)
    return build_pipeline(settings, spec, target=target, select=select, translator=translator, dbt_ref=dbt_ref,
                          dbt_vars=dbt_vars)


def build_pipeline(
    settings: ProjectSettings,
    spec: PipelineSpec,
    *,
    target: str | None = None,
    select: list[str] | None = None,
    translator: DbtBlockTranslator | None = None,
    dbt_ref: DbtProjectRef | None = None,
    dbt_vars: dict[str, Any] | None = None,
) -> Pipeline:
    check_dbt_command_blocks(settings, spec, target=target or spec.target)  # pre-flight, before any parse
    translator = translator or DbtBlockTranslator()
    blocks: dict[str, Block] = {}
    loaded = None
    ref = None
    if spec.dbt is not None:
        settings.export_environment()
        ref = dbt_ref or dbt_project_ref(settings, spec, target)
        if dbt_vars is None:  # no run at hand: a run of today stands for every run (the traced parse serves all dates)
            dbt_vars = run_dbt_vars(spec, datetime.now(timezone.utc))
        loaded = load_manifest(ref, dbt_vars=dbt_vars)
        chosen = loaded.select(spec.dbt.select, spec.dbt.exclude)
        if spec.dbt.command == "run":
            chosen = {u for u in chosen if loaded.nodes[u].resource_type in MODEL_ONLY_TYPES}
        if not chosen:
            raise SelectionError(
                f"pipeline '{spec.name}': dbt selector select={spec.dbt.select} exclude={spec.dbt.exclude} "
                f"matches no node of dbt project '{ref.name}'",
                hint=f"check the names with `mage-dbt blocks {spec.name}` or dbt ls --select ...",
            )
        blocks.update(translator.blocks((loaded.nodes[u] for u in chosen), ref.name))
    for block_spec in spec.blocks:
        if block_spec.name in blocks:
            raise ConfigError(
                f"pipeline '{spec.name}': block name '{block_spec.name}' is used twice (or clashes with a dbt node)",
                hint="give the block a unique name",
            )
        blocks[block_spec.name] = Block(
            name=block_spec.name,
            kind=block_spec.type,
            upstream=tuple(block_spec.upstream),
            spec=block_spec,
            dbt_project=ref.name if ref else None,
        )
    _check_upstreams(spec, blocks)
    graph = _graph(blocks)
    block_io = analyse_blocks(settings, spec, blocks, loaded, target or spec.target)
    for up, down in edges_from(block_io, blocks, loaded.nodes if loaded is not None else {}):
        graph.add_edge(up, down)
    _reject_cycles(spec, graph)
    blocks = {n: _with_upstream(b, graph) for n, b in blocks.items()}
    units = group_units(blocks, graph)
    origin = PipelineOrigin(settings=settings, target=target, select=tuple(select) if select else None,
                            translator=translator, dbt_ref=dbt_ref)
    pipeline = Pipeline(spec=spec, blocks=blocks, graph=graph, units=units, manifest=loaded, dbt_ref=ref, origin=origin)
    pipeline.unit_of = {b: u.id for u in units for b in u.blocks}
    pipeline.policies = _policies(settings, spec, blocks, loaded)
    pipeline.block_io = block_io
    if select:
        selected = restrict(pipeline, select_blocks(pipeline, select))
        selected.origin = origin  # resolved again, `select` chooses again
        return selected
    return pipeline


def _policies(settings, spec: PipelineSpec, blocks: dict[str, Block], loaded) -> dict[str, RunPolicy]:
    """Each block's run policy; a `dbt: policies:` selector that picks none of the pipeline's nodes is refused."""
    policies, unmatched = resolve_policies(spec, blocks, (lambda s: loaded.select([s])) if loaded else None)
    if unmatched:
        entry = spec.dbt.policies[unmatched[0]]
        try:
            path = pipeline_path(settings.flows_dir, spec.name)
            where = where_in_file(path, ["dbt", "policies", unmatched[0], "select"])
        except ConfigError:  # a spec built in code, not read from a file
            where = f"pipeline '{spec.name}'"
        raise ConfigError(
            f"{where}: run policy selector '{entry.select}' matches none of the pipeline's dbt nodes",
            hint=f"fix the selector (list the blocks with `mage-dbt blocks {spec.name}`) or remove the policy",
        )
    return policies


def select_blocks(pipeline: Pipeline, selectors: list[str]) -> set[str]:
    """Block names chosen by `selectors`: a block's own name, or dbt selector syntax over its dbt nodes."""
    names = {s for s in selectors if s in pipeline.blocks}
    dbt_selectors = [s for s in selectors if s not in pipeline.blocks]
    if dbt_selectors:
        if pipeline.manifest is None:
            raise SelectionError(
                f"pipeline '{pipeline.name}' has no block named {', '.join(dbt_selectors)}",
                hint=f"list the blocks with `mage-dbt blocks {pipeline.name}`",
            )
        ids = pipeline.manifest.select(dbt_selectors)
        by_id = {b.unique_id: n for n, b in pipeline.blocks.items() if b.unique_id}
        chosen = {by_id[u] for u in ids if u in by_id}
        if not chosen:
            raise SelectionError(
                f"--select {' '.join(dbt_selectors)} matches no block of pipeline '{pipeline.name}'",
                hint=f"list the blocks with `mage-dbt blocks {pipeline.name}`",
            )
        names |= chosen
    return names


def _check_upstreams(spec: PipelineSpec, blocks: dict[str, Block]) -> None:
    for block in blocks.values():
        for up in block.upstream:
            if up not in blocks:
                raise ConfigError(
                    f"pipeline '{spec.name}': block '{block.name}' names unknown upstream '{up}'",
                    hint=f"known blocks: {', '.join(sorted(blocks)[:12])}{' ...' if len(blocks) > 12 else ''}",
                )


def _graph(blocks: dict[str, Block]) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(blocks)
    for block in blocks.values():
        graph.add_edges_from((up, block.name) for up in block.upstream)
    return graph


def _reject_cycles(spec: PipelineSpec, graph: nx.DiGraph) -> None:
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return
    path = " -> ".join([edge[0] for edge in cycle] + [cycle[0][0]])
    raise ConfigError(f"pipeline '{spec.name}' has a cycle: {path}", hint="remove one of these upstream links")


def _with_upstream(block: Block, graph: nx.DiGraph) -> Block:
    ups = tuple(sorted(graph.predecessors(block.name)))
    return block if ups == block.upstream else replace(block, upstream=ups)


def group_units(blocks: dict[str, Block], graph: nx.DiGraph) -> list[Unit]:
    """Group dbt blocks into single invocations without creating cycles between units.

    A block's *stage* is the largest number of non-dbt blocks on any path reaching it. dbt blocks
    then move to the latest stage their successors allow (at most a non-dbt successor's stage,
    at most the latest dbt stage), so that a dbt node not needed by a Python/SQL block joins the
    dbt nodes downstream of one. All dbt blocks of one project and one stage share a unit: every
    path between two units passes a non-dbt block or goes to a later stage, so the unit graph
    stays acyclic.
    """
    stage: dict[str, int] = {}
    order = list(nx.topological_sort(graph))
    for name in order:
        preds = list(graph.predecessors(name))
        stage[name] = max(
            (stage[p] + (0 if blocks[p].is_dbt_node else 1) for p in preds), default=0
        )
    dbt_nodes = [n for n in graph if blocks[n].is_dbt_node]
    last_dbt_stage = max((stage[n] for n in dbt_nodes), default=0)
    for name in reversed(order):
        if blocks[name].is_dbt_node:
            stage[name] = min(
                (stage[s] for s in graph.successors(name)), default=last_dbt_stage
            )
    same_group = nx.Graph()
    same_group.add_nodes_from(dbt_nodes)
    first_of: dict[tuple[int, str | None], str] = {}
    for name in dbt_nodes:
        key = (stage[name], blocks[name].dbt_project)
        same_group.add_edge(first_of.setdefault(key, name), name)
    unit_of: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    for index, component in enumerate(
        sorted(nx.connected_components(same_group), key=lambda c: (min(stage[n] for n in c), sorted(c)[0]))
    ):
        unit_id = f"dbt_group_{index + 1}"
        members[unit_id] = sorted(component)
        for name in component:
            unit_of[name] = unit_id
    for name, block in blocks.items():
        if not block.is_dbt_node:
            unit_of[name] = name
            members[name] = [name]
    unit_graph = nx.DiGraph()
    unit_graph.add_nodes_from(members)
    unit_graph.add_edges_from(
        (unit_of[u], unit_of[v]) for u, v in graph.edges if unit_of[u] != unit_of[v]
    )
    order = list(nx.lexicographical_topological_sort(unit_graph))
    units = []
    for unit_id in order:
        first = blocks[members[unit_id][0]]
        kind = "dbt_group" if first.is_dbt_node else first.kind
        units.append(Unit(id=unit_id, kind=kind, blocks=tuple(members[unit_id]), dbt_project=first.dbt_project))
    return units


def restrict(pipeline: Pipeline, names: set[str]) -> Pipeline:
    """The same pipeline limited to `names` (used by retry and by `--select` on runs)."""
    unknown = names - set(pipeline.blocks)
    if unknown:
        raise SelectionError(
            f"pipeline '{pipeline.name}' has no block named {', '.join(sorted(unknown))}",
            hint=f"list the blocks with `mage-dbt blocks {pipeline.name}`",
        )
    sub = pipeline.graph.subgraph(names).copy()
    blocks = {n: _with_upstream(pipeline.blocks[n], sub) for n in names}
    units = group_units(blocks, sub)
    origin = pipeline.origin and replace(pipeline.origin, only=frozenset(names))
    restricted = Pipeline(
        spec=pipeline.spec, blocks=blocks, graph=sub, units=units,
        manifest=pipeline.manifest, dbt_ref=pipeline.dbt_ref, origin=origin,
        policies={n: p for n, p in pipeline.policies.items() if n in names},
        block_io={n: io for n, io in pipeline.block_io.items() if n in names},
    )
    restricted.unit_of = {b: u.id for u in units for b in u.blocks}
    return restricted


def for_dbt_vars(pipeline: Pipeline, dbt_vars: dict[str, Any]) -> Pipeline:
    """`pipeline` as dbt would resolve it with `dbt_vars`: itself when its manifest serves those
    vars (the common case: a var only used in SQL), else resolved again from the manifest dbt
    parses with them (mage_dbt.dbt.parse_vars)."""
    if pipeline.manifest is None or pipeline.origin is None or pipeline.manifest.serves(dbt_vars):
        return pipeline
    origin = pipeline.origin
    fresh = build_pipeline(origin.settings, pipeline.spec, target=origin.target,
                           select=list(origin.select) if origin.select else None,
                           translator=origin.translator, dbt_ref=origin.dbt_ref, dbt_vars=dbt_vars)
    if origin.only is None:
        return fresh
    return restrict(fresh, set(origin.only) & set(fresh.blocks))


def pipeline_file(settings: ProjectSettings, name: str) -> Path:
    return pipeline_path(settings.flows_dir, name)
