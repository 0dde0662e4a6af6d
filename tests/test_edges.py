"""Inferred edges between Python/SQL blocks and dbt relations (both ways), explicit upstreams, cycles,
and the grouping of dbt blocks into as few invocations as the mixed DAG allows."""

from __future__ import annotations

import os
import random

import networkx as nx
import pytest

from mage_dbt.blocks.block import Block
from mage_dbt.errors import BlockError, ConfigError
from mage_dbt.pipelines.pipeline import group_units, load_pipeline
from mage_dbt.settings import load_settings
from tests.conftest import copy_project, cli
from tests.support.block_pipelines import one_line_error, write_pipeline

LOADER = "from mage_dbt import data_loader\n\n@data_loader\ndef load():\n    return 1\n"
EXPORTER = "from mage_dbt import data_exporter\n\n@data_exporter\ndef export(data, **kwargs):\n    return None\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """One demo copy for the module: the manifest is parsed once, pipelines are loaded in-process."""
    saved = os.environ.get("MAGE_DBT_DATA_DIR")
    root = copy_project(tmp_path_factory.mktemp("edges") / "project")
    write_pipeline(root, "x", {"blocks": []}, {"flows/x/load.py": LOADER, "flows/x/export.py": EXPORTER})
    yield root
    if saved is None:
        os.environ.pop("MAGE_DBT_DATA_DIR", None)
    else:
        os.environ["MAGE_DBT_DATA_DIR"] = saved


def _load(project, name, spec, files=None):
    write_pipeline(project, name, {"dbt": {"select": ["*"]}, **spec}, files)
    return load_pipeline(load_settings(project), name)


def _ups(pipeline, name):
    return set(pipeline.graph.predecessors(name))


def test_the_demo_infers_edges_both_ways_and_runs_dbt_in_one_invocation(project):
    demo = load_pipeline(load_settings(project), "demo")
    # The landing block writes the source landing.orders: upstream of the model and source tests.
    assert _ups(demo, "landed_orders_daily") == {"land_orders"}
    assert "land_orders" in _ups(demo, "source_not_null_landing_orders_order_id")
    # The SQL check reads two models through ref(): downstream of both.
    assert _ups(demo, "check_revenue") == {"fct_daily_revenue", "landed_orders_daily"}
    assert _ups(demo, "export_report") == {"check_revenue"}
    assert [u.id for u in demo.units] == ["load_orders", "land_orders", "dbt_group_1", "check_revenue", "export_report"]
    assert set(demo.units[2].blocks) == {n for n, b in demo.blocks.items() if b.is_dbt_node}


def test_tables_named_in_sql_or_writes_give_edges_too(project):
    pipeline = _load(project, "edges_a", {"blocks": [
        {"name": "land", "type": "python", "file": "flows/x/load.py", "writes": ["MAIN_LANDING.Orders", "side.extra"]},
        {"name": "materialized", "type": "sql", "file": "flows/edges_a/materialized.sql",
         "materialize": "table", "schema": "side", "table": "summary"},
        {"name": "reader", "type": "sql", "file": "flows/edges_a/reader.sql"},
        {"name": "export", "type": "python", "file": "flows/x/export.py", "upstream": ["reader"]},
    ]}, {
        # A raw relation name (no ref) and a CTE named like a model: only the real tables count.
        "flows/edges_a/materialized.sql": "with stg_orders as (select 1 as n)\n"
                                          "select * from stg_orders, main.fct_orders, side.extra\n",
        "flows/edges_a/reader.sql": "select * from side.summary join {{ source('landing', 'orders') }} on true\n",
    })
    assert _ups(pipeline, "landed_orders_daily") == {"land"}  # writes: schema.table, case-insensitive
    assert _ups(pipeline, "materialized") == {"fct_orders", "land"}  # reads a model; reads what land writes
    assert _ups(pipeline, "reader") == {"materialized", "land"}  # reads a materialized block and a landed source
    assert _ups(pipeline, "export") == {"reader"}  # explicit upstream still counts


def test_a_sql_block_materializing_a_source_feeds_its_models(project):
    pipeline = _load(project, "edges_b", {"blocks": [
        {"name": "orders", "type": "sql", "file": "flows/edges_b/orders.sql", "materialize": "table",
         "schema": "main_landing", "table": "orders", "dialect": "postgres"},
    ]}, {"flows/edges_b/orders.sql": "select order_id, '{{ execution_date }}'::date as change_date from {{ ref('stg_orders') }}\n"})
    assert _ups(pipeline, "orders") == {"stg_orders"}
    assert _ups(pipeline, "landed_orders_daily") == {"orders"}
    # stg_orders must run before the block, landed_orders_daily after it: two dbt invocations.
    assert [u.id for u in pipeline.units] == ["dbt_group_1", "orders", "dbt_group_2"]
    assert "stg_orders" in pipeline.units[0].blocks and "landed_orders_daily" in pipeline.units[2].blocks


def test_writing_a_models_relation_or_an_unknown_source_is_refused(project):
    with pytest.raises(BlockError, match="writes main.fct_orders, the relation of dbt model 'fct_orders'"):
        _load(project, "edges_c", {"blocks": [
            {"name": "land", "type": "python", "file": "flows/x/load.py", "writes": ["main.fct_orders"]}]})
    with pytest.raises(BlockError, match=r"source\('landing', 'order'\) is not a source .* did you mean landing.orders"):
        _load(project, "edges_d", {"blocks": [
            {"name": "land", "type": "python", "file": "flows/x/load.py", "writes": ["source:landing.order"]}]})


def test_misspelt_block_options_are_reported_before_the_run(project):
    with pytest.raises(ConfigError, match=r"flows/edges_e.yaml:\d+: block 'report': unknown option 'materialise'.*"
                                          r" — did you mean 'materialize'\?"):
        _load(project, "edges_e", {"blocks": [
            {"name": "report", "type": "sql", "file": "flows/edges_e/report.sql", "materialise": "table"},
        ]}, {"flows/edges_e/report.sql": "select 1 as n\n"})
    with pytest.raises(ConfigError, match=r"flows/edges_f.yaml:\d+: block 'land': unknown option 'write'.* — did you mean 'writes'"):
        _load(project, "edges_f", {"blocks": [
            {"name": "land", "type": "python", "file": "flows/x/load.py", "write": ["side.t"]}]})


def test_cycles_through_inferred_edges_are_rejected_with_the_cycle(project):
    spec = {"blocks": [{"name": "relander", "type": "python", "file": "flows/x/export.py",
                        "upstream": ["landed_orders_daily"], "writes": ["source:landing.orders"]}]}
    with pytest.raises(ConfigError, match="has a cycle: .*landed_orders_daily -> relander"):
        _load(project, "cyc", spec)
    line = one_line_error(cli(project, "blocks", "cyc"))
    assert "pipeline 'cyc' has a cycle:" in line and "relander" in line


# -- grouping -----------------------------------------------------------------------------------------

def _random_pipeline(seed: int) -> tuple[dict[str, Block], nx.DiGraph]:
    rng = random.Random(seed)
    names = [f"b{i}" for i in range(rng.randint(4, 25))]
    kinds = {n: ("python" if rng.random() < 0.3 else "dbt_model") for n in names}
    graph = nx.DiGraph()
    graph.add_nodes_from(names)
    for i, down in enumerate(names):
        for up in rng.sample(names[:i], k=min(i, rng.randint(0, 3))):
            graph.add_edge(up, down)
    blocks = {n: Block(name=n, kind=kinds[n], upstream=tuple(graph.predecessors(n)),
                       unique_id=f"model.p.{n}" if kinds[n] != "python" else None, dbt_project="p")
              for n in names}
    return blocks, graph


@pytest.mark.parametrize("seed", range(60))
def test_units_run_in_an_order_that_respects_every_edge(seed):
    blocks, graph = _random_pipeline(seed)
    units = group_units(blocks, graph)
    position = {b: i for i, u in enumerate(units) for b in u.blocks}
    assert sorted(position) == sorted(blocks)
    assert all(position[up] <= position[down] for up, down in graph.edges)
    for up, down in graph.edges:  # an edge inside a unit is between dbt blocks only
        if position[up] == position[down]:
            assert blocks[up].is_dbt_node and blocks[down].is_dbt_node
    # Each dbt unit is one project's dbt blocks of one stage: fewer units than dbt blocks.
    assert all(len({blocks[b].dbt_project for b in u.blocks}) == 1 for u in units if u.kind == "dbt_group")


def test_a_dbt_only_pipeline_is_one_unit_even_when_disconnected():
    blocks = {n: Block(name=n, kind="dbt_model", unique_id=f"model.p.{n}", dbt_project="p") for n in "abcd"}
    graph = nx.DiGraph()
    graph.add_nodes_from(blocks)
    graph.add_edge("a", "b")
    assert [u.blocks for u in group_units(blocks, graph)] == [("a", "b", "c", "d")]
