"""`mage-dbt graph`: the demo pipeline drawn as SVG and as an offline HTML page, checked against the
resolved pipeline (every block with its kind, every edge, dbt blocks inside their dbt group)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import cli

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def demo_pipeline(demo_project, monkeypatch):
    """The demo pipeline resolved in-process, as the expectation for the picture."""
    from mage_dbt.pipelines.pipeline import load_pipeline
    from mage_dbt.settings import load_settings

    monkeypatch.setenv("MAGE_DBT_DATA_DIR", str(demo_project / ".mage_dbt"))
    return load_pipeline(load_settings(demo_project), "demo")


def test_graph_svg_draws_every_block_edge_kind_and_dbt_group(demo_project, demo_pipeline, tmp_path):
    out = tmp_path / "pictures" / "demo.svg"
    result = cli(demo_project, "graph", "demo", "-o", str(out), "--tests")  # every block, tests too
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    groups = {u.id for u in demo_pipeline.units if u.kind == "dbt_group"}
    assert f"{len(demo_pipeline.blocks)} blocks, {len(groups)} dbt group(s)" in result.stdout

    root = ET.parse(out).getroot()
    nodes = {g.get("id"): g for g in root.iter(f"{SVG}g") if g.get("class") == "node"}
    drawn = {g.get("data-name"): g.get("data-kind") for g in nodes.values()}
    assert drawn == {name: block.kind for name, block in demo_pipeline.blocks.items()}
    names = {node_id: g.get("data-name") for node_id, g in nodes.items()}
    edges = {(names[p.get("data-s")], names[p.get("data-t")]) for p in root.iter(f"{SVG}path")
             if p.get("class") == "edge"}
    assert edges == set(demo_pipeline.graph.edges)

    drawn_groups = {g.get("data-group") for g in root.iter(f"{SVG}g") if g.get("class") == "group"}
    assert drawn_groups == groups and groups
    for g in nodes.values():
        block = demo_pipeline.blocks[g.get("data-name")]
        title = g.find(f"{SVG}title").text
        if block.is_dbt_node:
            assert f"dbt group {demo_pipeline.unit_of[block.name]}" in title
        else:
            assert "dbt group" not in title


def test_graph_html_is_one_offline_page(demo_project, demo_pipeline, tmp_path):
    out = tmp_path / "demo.html"
    result = cli(demo_project, "graph", "demo", "--output", str(out), "--tests")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    page = out.read_text()
    assert page.lstrip().lower().startswith("<!doctype html") and "<svg" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched from the network
    assert all(f'data-name="{name}"' in page for name in demo_pipeline.blocks)


def test_graph_hides_tests_by_default_and_keeps_the_dependencies(demo_project, demo_pipeline, tmp_path):
    import networkx as nx

    out = tmp_path / "demo.svg"
    result = cli(demo_project, "graph", "demo", "-o", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tests = {n for n, b in demo_pipeline.blocks.items() if b.kind == "dbt_test"}
    assert tests and f"({len(tests)} dbt tests hidden: --tests draws them)" in result.stdout
    root = ET.parse(out).getroot()
    nodes = {g.get("id"): g.get("data-name") for g in root.iter(f"{SVG}g") if g.get("class") == "node"}
    assert set(nodes.values()) == set(demo_pipeline.blocks) - tests
    edges = {(nodes[p.get("data-s")], nodes[p.get("data-t")]) for p in root.iter(f"{SVG}path")
             if p.get("class") == "edge"}
    # Every edge between shown blocks, direct or through hidden tests, and no other.
    graph = demo_pipeline.graph
    expected = set()
    for source in set(graph) - tests:
        for target in set(graph) - tests - {source}:
            through = graph.subgraph(tests | {source, target})
            if graph.has_edge(source, target) or nx.has_path(through, source, target):
                expected.add((source, target))
    assert edges == expected


@pytest.mark.parametrize(
    "args, says",
    [
        (["demo", "-o", "demo.png"], "name the output file .svg or .html"),
        (["no_such_pipeline", "-o", "x.svg"], "unknown pipeline 'no_such_pipeline'"),
    ],
    ids=["unknown-format", "unknown-pipeline"],
)
def test_graph_bad_input_is_one_line(demo_project, args, says):
    result = cli(demo_project, "graph", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert not list(demo_project.glob("demo.png"))
