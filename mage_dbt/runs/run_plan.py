"""`plan`: what a run of a pipeline for one execution date would do, block by block, running nothing.

Each dbt node gets the decision a run would make before its group (`mage_dbt.runs.reuse`): run,
reuse or full refresh, with the reason (the part of its state key that changed, or why it always
runs), or with `only_fresh_sources:` skip-stale / fail. Python, SQL and dbt command blocks always
run. A source that a Python or SQL block of the pipeline writes counts as changed (that block runs
first), and so does every dbt node after a dbt command block. Nothing is built and no flow run is made;
the warehouse is only read: sources' `max(loaded_at_field)`, which relations exist, and (with
`only_fresh_sources:`) one `dbt source freshness`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mage_dbt.context import make_context
from mage_dbt.pipelines.pipeline import load_pipeline
from mage_dbt.runs.reuse import REUSE, RUN, RunReuse

COMPILE = "compile"


@dataclass(frozen=True)
class PlanRow:
    block: str
    kind: str
    action: str  # run, reuse, full refresh, compile
    reason: str


def plan_run(settings: Any, spec: Any, when: datetime, *, target: str | None = None, full_refresh: bool = False,
             select: list[str] | None = None, vars: dict[str, Any] | None = None,
             reuse: bool | None = None) -> list[PlanRow]:
    """The plan of a run of `spec` for `when`, in the order the run would take the blocks."""
    context = make_context(spec.name, when, interval=spec.interval, timezone=spec.timezone,
                           full_refresh=full_refresh, vars={**spec.vars, **(vars or {})},
                           target=target or spec.target, run_id="plan",
                           event_time=spec.dbt.event_time_window if spec.dbt else "run_interval")
    pipeline = load_pipeline(settings, spec.name, target=target, select=select, dbt_vars=context.dbt_vars())
    order = _order(pipeline)
    decisions = {}
    if pipeline.manifest is not None:
        reuse_on = spec.reuse if reuse is None else reuse
        planner = RunReuse(settings, pipeline, context, enabled=bool(reuse_on), planned_writes=_writes(pipeline))
        ids = [pipeline.blocks[n].unique_id for n in order if pipeline.blocks[n].unique_id]
        decisions = {d.block: d for d in planner.decide(ids).values()}
        decisions.update(_after_dbt_commands(pipeline, order, decisions))
    rows = []
    for name in order:
        block = pipeline.blocks[name]
        if block.is_ephemeral:
            rows.append(PlanRow(name, block.kind, COMPILE, "ephemeral: compiled into the models that use it"))
        elif name in decisions:
            rows.append(PlanRow(name, block.kind, decisions[name].action, decisions[name].reason))
        else:
            rows.append(PlanRow(name, block.kind, RUN, f"{block.kind} block: runs on every run"))
    return rows


def _writes(pipeline: Any) -> dict[str, str]:
    """"schema.table" -> the Python or SQL block of the pipeline that writes it (it runs first)."""
    from mage_dbt.blocks.edges import analyse_blocks

    origin = pipeline.origin
    io = analyse_blocks(origin.settings, pipeline.spec, pipeline.blocks, pipeline.manifest, origin.target)
    return {f"{schema}.{table}": name for name, block_io in sorted(io.items()) for schema, table in block_io.writes}


def _after_dbt_commands(pipeline: Any, order: list[str], decisions: dict[str, Any]) -> dict[str, Any]:
    """A dbt command block may rebuild anything, so a run forgets its records after one: the dbt
    nodes of later units run."""
    from dataclasses import replace

    changed, command = {}, None
    for name in order:
        block = pipeline.blocks[name]
        if block.kind == "dbt_command":
            command = command or name
        elif command and name in decisions and decisions[name].action == REUSE:
            changed[name] = replace(decisions[name], action=RUN,
                                    reason=f"dbt command block {command} runs before it (it may rebuild anything)")
    return changed


def _order(pipeline: Any) -> list[str]:
    return [name for unit in pipeline.units for name in _topological(pipeline, unit.blocks)]


def _topological(pipeline: Any, names: tuple[str, ...]) -> list[str]:
    import networkx as nx

    return list(nx.lexicographical_topological_sort(pipeline.graph.subgraph(names)))
