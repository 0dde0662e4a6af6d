"""Grouping dbt blocks into single invocations without creating cycles between units."""

from __future__ import annotations

import networkx as nx

from mage_dbt.blocks.block import Block
from mage_dbt.pipelines.pipeline import group_units


def _blocks(edges, kinds):
    blocks = {
        name: Block(name=name, kind=kind, upstream=tuple(u for u, d in edges if d == name), dbt_project="p")
        for name, kind in kinds.items()
    }
    graph = nx.DiGraph()
    graph.add_nodes_from(blocks)
    graph.add_edges_from(edges)
    return blocks, graph


def test_connected_dbt_blocks_share_one_unit():
    blocks, graph = _blocks(
        [("seed", "stg"), ("stg", "fct"), ("stg", "test_stg")],
        {"seed": "dbt_seed", "stg": "dbt_model", "fct": "dbt_model", "test_stg": "dbt_test"},
    )
    units = group_units(blocks, graph)
    assert len(units) == 1 and set(units[0].blocks) == set(blocks) and units[0].kind == "dbt_group"


def test_python_block_between_dbt_blocks_splits_groups_in_order():
    # a -> loader -> b, and a -> b directly: one group would need to run both before and after loader.
    blocks, graph = _blocks(
        [("a", "loader"), ("loader", "b"), ("a", "b"), ("b", "check")],
        {"a": "dbt_model", "loader": "python", "b": "dbt_model", "check": "sql"},
    )
    units = group_units(blocks, graph)
    assert [u.blocks for u in units] == [("a",), ("loader",), ("b",), ("check",)]
    unit_graph_is_acyclic = nx.is_directed_acyclic_graph(
        nx.DiGraph([(x.id, y.id) for x in units for y in units if set(x.blocks) & {
            u for b in y.blocks for u in blocks[b].upstream}])
    )
    assert unit_graph_is_acyclic


def test_independent_python_block_does_not_split_dbt_group():
    blocks, graph = _blocks(
        [("stg", "fct"), ("export", "report")],
        {"stg": "dbt_model", "fct": "dbt_model", "export": "python", "report": "python"},
    )
    units = group_units(blocks, graph)
    dbt_units = [u for u in units if u.kind == "dbt_group"]
    assert len(dbt_units) == 1 and set(dbt_units[0].blocks) == {"stg", "fct"}


def test_an_error_in_our_dbt_event_handling_is_kept_for_the_executor_not_raised_into_dbt():
    """dbt fires events from its worker threads: an exception escaping our callback there left the
    invocation hanging, so NodeEvents keeps it (the executor raises it once dbt returns)."""
    from types import SimpleNamespace

    from mage_dbt.dbt.invocation import NodeEvents

    class Broken:
        def node_started(self, unique_id):
            raise TypeError("listener bug")

    events = NodeEvents(Broken())
    event = SimpleNamespace(info=SimpleNamespace(name="NodeStart"),
                            data=SimpleNamespace(node_info=SimpleNamespace(unique_id="model.demo.a")))
    events(event)  # must not raise into dbt
    events(event)
    assert isinstance(events.failure, TypeError) and str(events.failure) == "listener bug"


def test_a_slot_tag_names_the_limit_a_run_holds_and_odd_tags_name_none():
    from mage_dbt.runs.concurrency import Slot, slot_tag, tagged_slots

    slot = Slot("mage-dbt-backfill:daily-20240101-20240110-1234", 3, "backfill")
    assert tagged_slots([slot_tag(slot), "backfill:x", "mage-dbt-slot:no-limit", "mage-dbt-slot:zero=0"]) == [
        Slot(slot.name, 3, f"limit {slot.name}")]
