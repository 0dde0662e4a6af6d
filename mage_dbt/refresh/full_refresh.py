"""Targeted full refresh: which blocks a full refresh rebuilds, and how a dbt group splits for it.

Only incremental models are rebuilt by selection (`plan_full_refresh`, `refresh_ids_for_run`);
with `--downstream` the models downstream of them run too, without `--full-refresh`. dbt's
`--full-refresh` applies to every node of an invocation, so a run rebuilding only some nodes of a
dbt group splits the group into *phases* (`invocation_phases`): layers of the dbt DAG that all run
with, or all without, `--full-refresh`, in dependency order. A group whose nodes are all targeted,
or none, stays one invocation.

dbt never full-refreshes snapshots (their history would be lost), so a snapshot is rebuilt only
when named explicitly (the CLI's `--include-snapshots` turns the selector's snapshots into explicit
names). Its table is then set aside before the snapshot runs, dropped when the new one is built and
put back when the rebuild fails (`set_aside_snapshots` / `settle_snapshots`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Sequence

import networkx as nx

from mage_dbt.dbt.manifest import LoadedManifest
from mage_dbt.errors import ConfigError, PipelineNotFound, SelectionError
from mage_dbt.pipelines.pipeline import Pipeline, build_pipeline, load_pipeline, select_blocks
from mage_dbt.pipelines.spec import DbtSelection, PipelineSpec, list_pipelines
from mage_dbt.warehouse.catalog import Catalog

LOG = logging.getLogger("mage_dbt.full_refresh")
BACKUP_SUFFIX = "__mage_dbt_prev"


@dataclass(frozen=True)
class RefreshPlan:
    """What `mage-dbt full-refresh` runs: blocks rebuilt from scratch, then their downstream models."""

    pipeline: str
    refresh: tuple[str, ...]
    downstream: tuple[str, ...] = ()
    ignored: tuple[str, ...] = ()

    @property
    def blocks(self) -> list[str]:
        return [*self.refresh, *self.downstream]


def _kind(pipeline: Pipeline, name: str) -> str | None:
    block = pipeline.blocks[name]
    if pipeline.manifest is None or not block.unique_id:
        return None
    node = pipeline.manifest.nodes[block.unique_id]
    if node.is_incremental:
        return "incremental"
    return node.resource_type


def incremental_models(pipeline: Pipeline) -> list[str]:
    """Block names of the pipeline's incremental models."""
    return sorted(n for n in pipeline.blocks if _kind(pipeline, n) == "incremental")


def plan_full_refresh(
    pipeline: Pipeline,
    select: Sequence[str],
    *,
    downstream: bool = False,
    include_snapshots: bool = False,
    snapshots_option: bool = True,
) -> RefreshPlan:
    """The incremental models (and, if asked, snapshots) `select` matches, plus downstream models.

    `snapshots_option`: the verb takes --include-snapshots (rebuild does not), so a refusal may suggest it."""
    chosen = select_blocks(pipeline, list(select))
    wanted = {"incremental", "snapshot"} if include_snapshots else {"incremental"}
    refresh = sorted(n for n in chosen if _kind(pipeline, n) in wanted)
    if not refresh:
        raise SelectionError(
            f"--select {' '.join(select)} matches no incremental model of '{pipeline.name}' "
            f"(it matches {_few(sorted(chosen))})",
            hint=f"incremental models there: {_few(incremental_models(pipeline)) or 'none'}"
            + ("; add --include-snapshots to rebuild the snapshots it matches"
               if snapshots_option and not include_snapshots and any(_kind(pipeline, n) == "snapshot" for n in chosen)
               else ""),
        )
    _check_refreshable(pipeline, refresh)
    later: list[str] = []
    if downstream:
        later = sorted(
            n for n in pipeline.downstream_of(set(refresh)) - set(refresh)
            if pipeline.blocks[n].kind == "dbt_model"
        )
    ignored = tuple(sorted(set(chosen) - set(refresh)))
    return RefreshPlan(pipeline=pipeline.name, refresh=tuple(refresh), downstream=tuple(later), ignored=ignored)


def refresh_ids_for_run(
    pipeline: Pipeline, full_refresh: bool, full_refresh_select: Sequence[str] | None
) -> set[str] | None:
    """The node ids a run's parameters ask to rebuild; None when `full_refresh` applies to all nodes.

    With `full_refresh_select`, only the incremental models it matches are rebuilt (snapshots only
    when named by their exact block name); the run's other blocks run normally.
    """
    if not full_refresh_select:
        return None
    if not full_refresh:
        raise ConfigError(
            f"full_refresh_select={list(full_refresh_select)} is given but full_refresh is false",
            hint="set full_refresh: true to rebuild those models, or clear full_refresh_select",
        )
    explicit = set(full_refresh_select)
    names = select_blocks(pipeline, list(full_refresh_select))
    chosen = sorted(
        n for n in names
        if _kind(pipeline, n) == "incremental" or (_kind(pipeline, n) == "snapshot" and n in explicit)
    )
    if not chosen:
        raise SelectionError(
            f"full_refresh_select={list(full_refresh_select)} matches no incremental model of this run "
            f"of '{pipeline.name}'",
            hint=f"incremental models in the run: {_few(incremental_models(pipeline)) or 'none'}",
        )
    _check_refreshable(pipeline, chosen)
    return {pipeline.blocks[n].unique_id for n in chosen}  # type: ignore[misc]


def _check_refreshable(pipeline: Pipeline, names: Iterable[str]) -> None:
    """Refuse models whose dbt config says `full_refresh: false`: dbt would silently not rebuild them."""
    assert pipeline.manifest is not None
    nodes = pipeline.manifest.dbt_manifest.nodes
    for name in names:
        node = nodes.get(pipeline.blocks[name].unique_id)
        if node is not None and getattr(node.config, "full_refresh", None) is False:
            raise ConfigError(
                f"'{name}' sets full_refresh: false in its dbt config, so dbt never rebuilds it",
                hint=f"remove that config from {node.original_file_path} to allow a full refresh",
            )


def _few(names: Sequence[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def invocation_phases(
    loaded: LoadedManifest, unique_ids: Sequence[str], refresh: set[str]
) -> list[tuple[list[str], bool]]:
    """Split one dbt group into ordered invocations: (node ids, run with --full-refresh?).

    A node's phase is the first phase after all its ancestors' phases whose parity matches it
    (odd phases refresh). Ancestry uses the whole manifest, so an order imposed through nodes
    outside the group is kept too.
    """
    ids = list(unique_ids)
    targeted = [u for u in ids if u in refresh]
    if not targeted or len(targeted) == len(ids):
        return [(ids, bool(targeted))]
    wanted = set(ids)
    graph = nx.DiGraph()
    graph.add_nodes_from(ids)
    for node in loaded.nodes.values():
        graph.add_edges_from((dep, node.unique_id) for dep in node.depends_on)
    relevant = set(wanted)
    for uid in ids:
        relevant |= nx.ancestors(graph, uid)
    sub = graph.subgraph(relevant)
    phase: dict[str, int] = {}
    for uid in nx.topological_sort(sub):
        current = max((phase[p] for p in sub.predecessors(uid)), default=0)
        if uid in wanted and current % 2 != (1 if uid in refresh else 0):
            current += 1
        phase[uid] = current
    phases: dict[int, list[str]] = {}
    for uid in ids:
        phases.setdefault(phase[uid], []).append(uid)
    return [(phases[p], p % 2 == 1) for p in sorted(phases)]


def snapshot_ids(loaded: LoadedManifest, unique_ids: Iterable[str]) -> list[str]:
    return [u for u in unique_ids if loaded.nodes[u].resource_type == "snapshot"]


def set_aside_snapshots(loaded: LoadedManifest, unique_ids: Sequence[str]) -> dict[str, str]:
    """Rename the existing tables of these snapshots to `<name>__mage_dbt_prev`; return the moved ones."""
    moved: dict[str, str] = {}
    with Catalog.open(loaded.ref) as catalog:
        for uid in unique_ids:
            node = loaded.nodes[uid]
            if catalog.relation_columns(node.database, node.schema, node.alias) is None:
                continue
            backup = f"{node.alias}{BACKUP_SUFFIX}"
            catalog.drop_table(node.database, node.schema, backup)
            catalog.rename_table(node.database, node.schema, node.alias, backup)
            moved[uid] = backup
    return moved


def settle_snapshots(loaded: LoadedManifest, moved: dict[str, str], succeeded: set[str]) -> None:
    """Drop the set-aside tables of rebuilt snapshots; put back those whose rebuild failed."""
    if not moved:
        return
    with Catalog.open(loaded.ref) as catalog:
        for uid, backup in moved.items():
            node = loaded.nodes[uid]
            if uid in succeeded:
                catalog.drop_table(node.database, node.schema, backup)
                continue
            LOG.warning("snapshot %s was not rebuilt: restoring its previous table", node.name)
            catalog.drop_table(node.database, node.schema, node.alias)
            catalog.rename_table(node.database, node.schema, backup, node.alias)


def describe_plan(plan: RefreshPlan) -> str:
    text = f"full refresh of {', '.join(plan.refresh)}"
    if plan.downstream:
        text += f"; then downstream: {', '.join(plan.downstream)}"
    if plan.ignored:
        text += f" (not incremental, not rebuilt: {_few(list(plan.ignored))})"
    return text


def resolve_refresh_target(settings, name: str, target: str | None) -> tuple[Pipeline, bool]:
    """`name` as a pipeline (flows/<name>.yaml) if there is one, else as a dbt project: (pipeline, is_file)."""
    try:
        return load_pipeline(settings, name, target=target), True
    except PipelineNotFound:
        if not (settings.dbt_projects_dir / name / "dbt_project.yml").is_file():
            raise ConfigError(
                f"'{name}' is neither a pipeline (no flows/{name}.yaml) nor a dbt project "
                f"(no {settings.dbt_projects_dir / name / 'dbt_project.yml'})",
                hint=f"pipelines: {_few(list_pipelines(settings.flows_dir)) or 'none'}",
            ) from None
    spec = PipelineSpec(name=name, dbt=DbtSelection(project=name))
    return build_pipeline(settings, spec, target=target), False
