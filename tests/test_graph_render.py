"""The pipeline picture: SVG structure, colours, groups, escaping, offline HTML, bad input."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest

from mage_dbt.errors import ConfigError
from mage_dbt.pipelines.graph import KIND_STYLES, GraphNode, render_html, render_svg, render_to_file

SVG = "{http://www.w3.org/2000/svg}"
N = GraphNode


def pipeline() -> list[GraphNode]:
    """A small realistic pipeline: loaders, one dbt build group, a Python step, a second group."""
    return [
        N("load_orders", "python"),
        N("load_customers", "python"),
        N("seed_countries", "dbt_seed", "build"),
        N("stg_orders", "dbt_model", "build", ("load_orders",)),
        N("stg_customers", "dbt_model", "build", ("load_customers", "seed_countries")),
        N("snap_customers", "dbt_snapshot", "build", ("stg_customers",)),
        N("fct_orders", "dbt_model", "build", ("stg_orders", "stg_customers")),
        N("not_null_fct_orders_id", "dbt_test", "build", ("fct_orders",)),
        N('score <churn> & "risk"', "python", None, ("fct_orders", "snap_customers")),
        N("mart_churn", "dbt_model", "scores", ('score <churn> & "risk"',)),
        N("assert_churn_o'k", "dbt_test", "scores", ("mart_churn",)),
        N("export.sql", "sql", None, ("mart_churn", "mart_churn")),  # duplicate link drawn once
        N("dbt_docs_generate", "dbt_command", None, ("mart_churn",)),
    ]


def generated(count: int, seed: int = 7) -> list[GraphNode]:
    """A larger DAG: dbt groups are connected runs of dbt nodes, as the pipeline builder makes them."""
    rnd = random.Random(seed)
    nodes: list[GraphNode] = []
    for i in range(count):
        kind = rnd.choice(["dbt_model"] * 5 + ["dbt_test", "dbt_seed", "python", "sql"])
        picks = range(rnd.randint(1, 3)) if i else ()
        ups = sorted({nodes[rnd.randrange(max(0, i - 30), i)].name for _ in picks})
        group = f"group_{i // 60}" if kind.startswith("dbt_") else None
        nodes.append(N(f"block_{i:03d}_{kind}", kind, group, tuple(ups)))
    return nodes


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def node_boxes(root: ET.Element) -> dict[str, tuple[float, float, float, float, ET.Element]]:
    boxes = {}
    for g in root.iter(f"{SVG}g"):
        if g.get("class") == "node":
            rect = g.find(f"{SVG}rect")
            x, y, w, h = (float(rect.get(a)) for a in ("x", "y", "width", "height"))
            boxes[g.get("data-name")] = (x, y, w, h, g)
    return boxes


def test_every_node_name_appears_as_text():
    nodes = pipeline()
    root = parse(render_svg(nodes))
    texts = {t.text for t in root.iter(f"{SVG}text")}
    assert {n.name for n in nodes} <= texts


def test_edge_count_equals_upstream_links():
    nodes = pipeline()
    root = parse(render_svg(nodes))
    edges = [p for p in root.iter(f"{SVG}path") if p.get("class") == "edge"]
    assert len(edges) == sum(len(set(n.upstream)) for n in nodes) == 13
    ids = {g.get("data-name"): g.get("id") for *_, g in node_boxes(root).values()}
    drawn = {(e.get("data-s"), e.get("data-t")) for e in edges}
    assert drawn == {(ids[u], ids[n.name]) for n in nodes for u in n.upstream}


def test_edges_run_left_to_right_as_curves():
    nodes = generated(50)
    root = parse(render_svg(nodes))
    boxes = node_boxes(root)
    ids = {g.get("id"): name for name, (*_, g) in boxes.items()}
    for edge in (p for p in root.iter(f"{SVG}path") if p.get("class") == "edge"):
        src, dst = boxes[ids[edge.get("data-s")]], boxes[ids[edge.get("data-t")]]
        assert src[0] + src[2] < dst[0]
        assert " C" in edge.get("d")


def test_node_colours_follow_kinds():
    root = parse(render_svg(pipeline()))
    seen = set()
    for *_, g in node_boxes(root).values():
        rect = g.find(f"{SVG}rect")
        fill, stroke, _ = KIND_STYLES[g.get("data-kind")]
        assert (rect.get("fill"), rect.get("stroke")) == (fill, stroke)
        seen.add(g.get("data-kind"))
    assert seen == set(KIND_STYLES)
    assert len({fill for fill, _, _ in KIND_STYLES.values()}) == len(KIND_STYLES)


def test_unknown_kind_is_drawn_grey_and_listed_in_the_legend():
    svg = render_svg([N("odd", "spark_job")])
    rect = next(iter(node_boxes(parse(svg)).values()))[4].find(f"{SVG}rect")
    assert rect.get("fill") == "#f3f4f6"
    assert 'data-kind="spark_job"' in render_html([N("odd", "spark_job")])


def _inside(box, x, y) -> bool:
    bx, by, bw, bh = (float(box.get(a)) for a in ("x", "y", "width", "height"))
    return bx <= x <= bx + bw and by <= y <= by + bh


@pytest.mark.parametrize(
    "nodes", [pipeline(), generated(50), generated(200, seed=3)], ids=["small", "50", "200"]
)
def test_group_boxes_contain_their_members_and_nobody_else(nodes):
    root = parse(render_svg(nodes))
    boxes = node_boxes(root)
    group_boxes = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "group-box"]
    groups = {n.group for n in nodes if n.group}
    assert {r.get("data-group") for r in group_boxes} == groups
    for node in nodes:
        x, y, w, h, _ = boxes[node.name]
        corners = [(x, y), (x + w, y + h)]
        holders = {r.get("data-group") for r in group_boxes if all(_inside(r, *c) for c in corners)}
        touching = {r.get("data-group") for r in group_boxes if any(_inside(r, *c) for c in corners)}
        assert holders == ({node.group} if node.group else set()), node.name
        assert touching == holders, node.name
    labels = {t.text for t in root.iter(f"{SVG}text") if t.get("class") == "group-label"}
    assert labels == groups


def test_nodes_do_not_overlap():
    boxes = list(node_boxes(parse(render_svg(generated(120)))).values())
    for i, (x, y, w, h, _) in enumerate(boxes):
        for x2, y2, w2, h2, _ in boxes[i + 1 :]:
            assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y


def test_names_are_xml_escaped_and_round_trip():
    nodes = [
        N('a<b>&"c"', "python"),
        N("it's ]]> <!-- x -->", "sql", "g&<", ('a<b>&"c"',)),
        N("ctl\x01char", "sql"),
    ]
    svg = render_svg(nodes, title="<pipeline & co>")
    root = parse(svg)
    texts = {t.text for t in root.iter(f"{SVG}text")}
    assert {'a<b>&"c"', "it's ]]> <!-- x -->", "ctl\ufffdchar", "g&<"} <= texts
    assert root.find(f"{SVG}title").text == "<pipeline & co>"
    assert "<b>" not in svg and "<!-- x" not in svg


def test_long_names_are_shortened_on_screen_but_kept_in_full():
    name = "mart_customer_lifetime_value_by_country_and_currency_monthly_rollup_v2"
    root = parse(render_svg([N(name, "dbt_model")]))
    _, _, w, _, g = node_boxes(root)[name]
    shown = g.find(f"{SVG}text[@class='name']").text
    assert shown.endswith("\u2026") and name.startswith(shown[:-1]) and w <= 260
    assert name in g.find(f"{SVG}title").text


def test_html_is_self_contained_with_legend_and_inline_svg():
    nodes = pipeline()
    page = render_html(nodes, title="Daily <build>")
    assert not re.search(r"https?://", page)
    assert not re.search(r"<link|<img|<iframe|@import|src=|href=", page, re.I)
    urls = re.findall(r"url\(([^)]*)\)", page)
    assert urls and all(u.startswith("#") for u in urls)
    assert "<title>Daily &lt;build&gt;</title>" in page
    legend = re.search(r'<ul class="legend">(.*?)</ul>', page).group(1)
    for kind, (fill, stroke, label) in KIND_STYLES.items():
        assert f'data-kind="{kind}"' in legend and fill in legend and label in legend
    assert "dbt group" in legend
    svg = page[page.index("<svg") : page.index("</svg>") + 6]
    texts = {t.text for t in ET.fromstring(svg).iter("text")}
    assert {n.name for n in nodes} <= texts
    assert "<script>" in page and "mouseenter" in page


def test_cycle_is_a_config_error_naming_the_loop():
    nodes = [N("a", "python", None, ("c",)), N("b", "sql", None, ("a",)), N("c", "dbt_model", "g", ("b",))]
    loop = r"pipeline graph has a cycle: (a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)"
    with pytest.raises(ConfigError, match=loop):
        render_svg(nodes)
    with pytest.raises(ConfigError, match="cycle: a -> a"):
        render_html([N("a", "python", None, ("a",))], "t")


def test_unknown_upstream_and_duplicate_names_are_config_errors():
    with pytest.raises(ConfigError, match="block 'b' lists upstream 'ghost', which is not in the pipeline"):
        render_svg([N("b", "sql", None, ("ghost",))])
    with pytest.raises(ConfigError, match="two blocks named 'a'"):
        render_svg([N("a", "sql"), N("a", "python")])


def test_empty_and_single_node_pipelines_render():
    assert parse(render_svg([])).tag == f"{SVG}svg"
    root = parse(render_svg([N("only", "dbt_seed", "g")]))
    assert "only" in {t.text for t in root.iter(f"{SVG}text")}


def test_render_to_file_picks_the_format_from_the_suffix(tmp_path):
    svg_path = render_to_file(pipeline(), tmp_path / "out" / "graph.svg", title="x")
    assert parse(svg_path.read_text(encoding="utf-8")).tag == f"{SVG}svg"
    html_path = render_to_file(pipeline(), tmp_path / "graph.HTML")
    assert html_path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert "<title>graph</title>" in html_path.read_text(encoding="utf-8")
    for bad in ("graph.png", "graph"):
        with pytest.raises(ConfigError) as caught:
            render_to_file(pipeline(), tmp_path / bad)
        assert "name the output file .svg or .html" in str(caught.value)
        assert not (tmp_path / bad).exists()


def test_rendering_is_deterministic():
    assert render_html(generated(80), "x") == render_html(generated(80), "x")


def test_500_nodes_render_quickly_and_stay_bounded():
    nodes = generated(500, seed=11)
    started = time.perf_counter()
    svg = render_svg(nodes)
    elapsed = time.perf_counter() - started
    root = parse(svg)
    assert elapsed < 5
    assert len(node_boxes(root)) == 500
    assert len(svg) < 1_500_000
    width, height = float(root.get("width")), float(root.get("height"))
    assert width < 20_000 and height < 20_000


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_page_script_runs_in_a_real_browser(tmp_path):
    page = render_to_file(pipeline(), tmp_path / "graph.html", title="browser check")
    hover = (
        "<script>document.querySelector('[data-name=\"fct_orders\"]')"
        ".dispatchEvent(new Event('mouseenter'));</script>"
    )
    page.write_text(page.read_text(encoding="utf-8").replace("</body>", hover + "</body>"), encoding="utf-8")
    result = subprocess.run(
        [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--window-size=1400,900",
            f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
            f"file://{page}",
        ],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    # the fit button's label is set by the page script: present only if the script ran cleanly
    assert re.search(r'<button id="fit" type="button">(Fit to width|Actual size)</button>', result.stdout)
    dom = ET.fromstring(re.search(r"<svg.*</svg>", result.stdout, re.S).group(0))
    assert set(dom.get("class").split()) == {"mage-graph", "fit", "focus"}
    classes = {g.get("data-name"): g.get("class") for g in dom.iter("g") if g.get("data-name")}
    assert classes["fct_orders"] == "node self hl"
    lit = {name for name, cls in classes.items() if "hl" in cls.split()}
    assert "snap_customers" not in lit and {"load_orders", "seed_countries", "dbt_docs_generate"} <= lit
    assert len(lit) == 12
    assert sum(1 for p in dom.iter("path") if "hl" in (p.get("class") or "").split()) == 11
    assert "fct_orders — 5 upstream, 6 downstream" in result.stdout
