"""A picture of a pipeline DAG: SVG, or a self-contained HTML page that works offline.

This module owns turning a list of `GraphNode` records into a drawing. It does not read pipelines:
the caller (the `graph` CLI verb) maps blocks to `GraphNode`s. networkx does the graph work:
`topological_generations` layers the DAG left to right and `multipartite_layout` places the
layers; we only choose the order of nodes inside each layer (a few barycenter sweeps, keeping a
dbt group's members together) so edges cross less and every group is one contiguous run per
layer. Group outlines are drawn as one rounded box per layer joined across layers, so a group's
background never covers a node of another group, however the layers line up.
"""

from __future__ import annotations

import html
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import fmean

import networkx as nx

from mage_dbt.errors import ConfigError

__all__ = ["KIND_STYLES", "GraphNode", "render_html", "render_svg", "render_to_file", "without_kind"]


@dataclass(frozen=True)
class GraphNode:
    """One block of a pipeline as the picture needs it."""

    name: str
    kind: str
    group: str | None = None
    upstream: tuple[str, ...] = ()


# kind -> (fill, stroke, label); unknown kinds are drawn grey under their own name
KIND_STYLES: dict[str, tuple[str, str, str]] = {
    "dbt_model": ("#ffe4dc", "#e8542f", "dbt model"),
    "dbt_seed": ("#dcfce7", "#16a34a", "dbt seed"),
    "dbt_snapshot": ("#ede9fe", "#7c3aed", "dbt snapshot"),
    "dbt_test": ("#fef9c3", "#b45309", "dbt test"),
    "dbt_command": ("#fce7f3", "#db2777", "dbt command"),
    "python": ("#dbeafe", "#2563eb", "python"),
    "sql": ("#ccfbf1", "#0f766e", "sql"),
}
_OTHER = ("#f3f4f6", "#6b7280")
_GROUP_TINTS = [("#f1f5f9", "#94a3b8"), ("#fdf6e3", "#d6b76e"), ("#eef6ee", "#8fbf8f")]

NODE_H, ROW_H, COL_GAP, MARGIN, PAD, LABEL_H = 38, 58, 84, 24, 7, 22
MIN_W, MAX_W, CHAR_W = 120, 260, 7.0
_INVALID_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _esc(text: str) -> str:
    return html.escape(_INVALID_XML.sub("\ufffd", text), quote=True)


def _style(kind: str) -> tuple[str, str, str]:
    return KIND_STYLES.get(kind, (*_OTHER, kind))


def _build_graph(nodes: Sequence[GraphNode]) -> nx.DiGraph:
    graph = nx.DiGraph()
    for node in nodes:
        if node.name in graph:
            raise ConfigError(f"pipeline graph has two blocks named {node.name!r}")
        graph.add_node(node.name, kind=node.kind, group=node.group)
    for node in nodes:
        for up in dict.fromkeys(node.upstream):
            if up not in graph:
                raise ConfigError(
                    f"block {node.name!r} lists upstream {up!r}, which is not in the pipeline"
                )
            graph.add_edge(up, node.name)
    try:
        cycle = nx.find_cycle(graph)
    except nx.NetworkXNoCycle:
        return graph
    path = " -> ".join([edge[0] for edge in cycle] + [cycle[0][0]])
    raise ConfigError(
        f"pipeline graph has a cycle: {path}", hint="remove one of these upstream links"
    )


def _layers(graph: nx.DiGraph) -> dict[str, int]:
    layer = {n: i for i, gen in enumerate(nx.topological_generations(graph)) for n in gen}
    for n in graph:  # pull sources (seeds, loaders) next to their first consumer
        if graph.in_degree(n) == 0 and graph.out_degree(n) > 0:
            layer[n] = min(layer[s] for s in graph.successors(n)) - 1
    used = {value: i for i, value in enumerate(sorted(set(layer.values())))}
    return {n: used[value] for n, value in layer.items()}


def _order(graph: nx.DiGraph, layer: dict[str, int], index: dict[str, int]) -> list[list[str]]:
    """Order each layer by barycenter sweeps; a group's members stay one contiguous run."""
    columns: list[list[str]] = [[] for _ in range(max(layer.values()) + 1)]
    for n in sorted(graph, key=index.__getitem__):
        columns[layer[n]].append(n)
    pos = {n: i - (len(col) - 1) / 2 for col in columns for i, n in enumerate(col)}

    rank: dict[str, float] = {}

    def sort_column(i: int, neighbours) -> None:
        key = {}
        for n in columns[i]:
            near = [pos[m] for m in neighbours(n)]
            key[n] = fmean(near) if near else pos[n]
        blocks: dict[object, list[str]] = defaultdict(list)
        for n in columns[i]:
            group = graph.nodes[n]["group"]
            blocks[group if group is not None else ("n", n)].append(n)
        where = {b: fmean(key[n] for n in members) for b, members in blocks.items()}
        if rank:  # groups keep one top-to-bottom order in every layer: outlines never cross
            grouped = [b for b in blocks if isinstance(b, str)]
            slots = sorted(where[b] for b in grouped)
            where.update(zip(sorted(grouped, key=rank.__getitem__), slots))
        ordered = sorted(blocks, key=lambda b: (where[b], pos[blocks[b][0]]))
        columns[i] = [n for b in ordered for n in sorted(blocks[b], key=lambda n: (key[n], pos[n]))]
        pos.update({n: j - (len(columns[i]) - 1) / 2 for j, n in enumerate(columns[i])})

    for sweep in range(6):  # down, up, down; then again with the group order fixed
        if sweep == 3:
            members: dict[str, list[float]] = defaultdict(list)
            for n, group in graph.nodes(data="group"):
                if group is not None:
                    members[group].append(pos[n])
            rank.update({group: fmean(ys) for group, ys in members.items()})
        forward = sweep % 2 == 0
        for i in range(len(columns)) if forward else reversed(range(len(columns))):
            sort_column(i, graph.predecessors if forward else graph.successors)
    return columns


@dataclass(frozen=True)
class _Layout:
    width: float
    height: float
    box: dict[str, tuple[float, float, float, float]]  # name -> x, y, w, h
    groups: dict[str, list[tuple[float, float, float, float]]]  # group -> per-layer boxes
    label_at: dict[str, tuple[float, float, float]]  # group -> x, baseline y, width


def _layout(graph: nx.DiGraph, nodes: Sequence[GraphNode], top: float) -> _Layout:
    layer = _layers(graph)
    columns = _order(graph, layer, {node.name: i for i, node in enumerate(nodes)})
    first_layer: dict[str, int] = {}
    for n, group in graph.nodes(data="group"):
        if group is not None:
            first_layer[group] = min(first_layer.get(group, layer[n]), layer[n])
    slots: dict[int, list[object]] = {}
    for i, col in enumerate(columns):  # an empty slot above each group's first run holds its label
        slots[i] = []
        for n in col:
            group = graph.nodes[n]["group"]
            if group is not None and first_layer[group] == i and ("label", group) not in slots[i]:
                slots[i].append(("label", group))
            slots[i].append(n)
    placeholder = nx.Graph()
    placeholder.add_nodes_from(s for col in slots.values() for s in col)
    pos = nx.multipartite_layout(placeholder, subset_key=slots, align="vertical")
    unit = _grid_unit(pos, slots)
    y_min = min(p[1] for p in pos.values())
    row = {s: float(p[1] - y_min) / unit for s, p in pos.items()}

    widths = [
        min(MAX_W, max(MIN_W, max(len(n) for n in col) * CHAR_W + 24)) for col in columns
    ]
    col_x = [MARGIN + PAD + sum(widths[:i]) + COL_GAP * i for i in range(len(columns))]
    box = {
        n: (col_x[i], top + row[n] * ROW_H, widths[i], NODE_H)
        for i, col in enumerate(columns)
        for n in col
    }
    groups: dict[str, list[tuple[float, float, float, float]]] = defaultdict(list)
    label_at: dict[str, tuple[float, float, float]] = {}
    for i, col in enumerate(slots.values()):
        runs: dict[str, list[float]] = defaultdict(list)
        for s in col:
            if isinstance(s, tuple):
                y = top + row[s] * ROW_H + ROW_H - PAD - LABEL_H - 4
                label_at[s[1]] = (col_x[i], y + 15, widths[i])
                runs[s[1]] += [y, y]
            elif graph.nodes[s]["group"] is not None:
                runs[graph.nodes[s]["group"]] += [box[s][1], box[s][1] + NODE_H]
        for group, ys in runs.items():
            y0, y1 = min(ys) - PAD, max(ys) + PAD
            groups[group].append((col_x[i] - PAD, y0, widths[i] + 2 * PAD, y1 - y0))
    width = col_x[-1] + widths[-1] + PAD + MARGIN
    height = max(y + h for _, y, _, h in box.values()) + PAD + MARGIN
    return _Layout(width, height, box, dict(groups), label_at)


def _grid_unit(pos: dict, slots: dict[int, list[object]]) -> float:
    """multipartite_layout rescales both axes by one factor: recover one grid step from it."""
    if len(slots) > 1:
        return float(pos[slots[1][0]][0] - pos[slots[0][0]][0])
    col = slots[0]
    return float(pos[col[1]][1] - pos[col[0]][1]) if len(col) > 1 else 1.0


def _fit(text: str, width: float, char_w: float) -> str:
    room = max(4, int((width - 16) / char_w))
    return text if len(text) <= room else text[: room - 1] + "\u2026"


_SVG_CSS = """
.edge{fill:none;stroke:#94a3b8;stroke-width:1.4;marker-end:url(#arrow)}
.node rect{stroke-width:1.5}.node text{pointer-events:none}
.node .kind{font-size:9px;letter-spacing:.06em;text-transform:uppercase}
.node .name{font-size:12px;fill:#0f172a}.group-label{font-size:11px;font-weight:600;fill:#475569}
.node{cursor:default}.focus .node:not(.hl){opacity:.18}.focus .edge{opacity:.07}
.focus .edge.hl{opacity:1;stroke:#0f172a;stroke-width:2;marker-end:url(#arrow-hl)}
.node.self rect{stroke-width:3.5}
"""


def render_svg(nodes: Sequence[GraphNode], *, legend: bool = True, title: str | None = None) -> str:
    """The DAG as a standalone SVG document (left to right, kinds coloured, groups outlined)."""
    return _svg(list(nodes), legend=legend, title=title, xmlns=True)


def _svg(nodes: list[GraphNode], *, legend: bool, title: str | None, xmlns: bool) -> str:
    graph = _build_graph(nodes)
    top = MARGIN + (34 if legend else 0)
    out: list[str] = []
    if not nodes:
        width, height = 320.0, top + 60.0
        body = [f'<text x="{MARGIN}" y="{top + 20}" class="group-label">empty pipeline</text>']
    else:
        lay = _layout(graph, nodes, top)
        width, height = lay.width, lay.height
        body = _body(graph, nodes, lay)
    ns = ' xmlns="http://www.w3.org/2000/svg"' if xmlns else ""
    out.append(
        f'<svg{ns} class="mage-graph" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="system-ui,-apple-system,'
        'Segoe UI,Helvetica,Arial,sans-serif" role="img">'
    )
    if title:
        out.append(f"<title>{_esc(title)}</title>")
    out.append(f"<style>{_SVG_CSS}</style><defs>")
    out += [
        f'<marker id="{marker}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        f'markerHeight="7" orient="auto"><path d="M0,0L10,5L0,10z" fill="{colour}"/></marker>'
        for marker, colour in (("arrow", "#94a3b8"), ("arrow-hl", "#0f172a"))
    ]
    out.append('</defs><g class="legend">')
    x = float(MARGIN)
    for fill, stroke, label, kind in _legend(nodes) if legend else ():
        out.append(
            f'<rect x="{x:.0f}" y="{MARGIN}" width="14" height="14" rx="3" fill="{fill}" '
            f'stroke="{stroke}" data-kind="{_esc(kind)}"/><text x="{x + 20:.0f}" '
            f'y="{MARGIN + 11}" font-size="12" fill="#334155">{_esc(label)}</text>'
        )
        x += 36 + len(label) * CHAR_W
    return "\n".join([*out, "</g>", *body, "</svg>"])


def _body(graph: nx.DiGraph, nodes: list[GraphNode], lay: _Layout) -> list[str]:
    ids = {node.name: f"n{i}" for i, node in enumerate(nodes)}
    out = ['<g class="groups">']
    for gi, (group, boxes) in enumerate(lay.groups.items()):
        fill, stroke = _GROUP_TINTS[gi % len(_GROUP_TINTS)]
        shapes = []
        for a, b in zip(boxes, boxes[1:]):
            if b[0] - (a[0] + a[2]) <= COL_GAP:  # adjacent layers: join the two boxes
                xa, xb = a[0] + a[2] - 8, b[0] + 8
                shapes.append(
                    f'<polygon class="group-link" points="{xa:.1f},{a[1]:.1f} {xb:.1f},{b[1]:.1f} '
                    f'{xb:.1f},{b[1] + b[3]:.1f} {xa:.1f},{a[1] + a[3]:.1f}"'
                )
        name = _esc(group)
        shapes += [
            f'<rect class="group-box" data-group="{name}" x="{x:.1f}" y="{y:.1f}" '
            f'width="{w:.1f}" height="{h:.1f}" rx="10"'
            for x, y, w, h in boxes
        ]
        out.append(f'<g class="group" data-group="{name}"><title>dbt group: {name}</title>')
        # stroke pass then fill pass: only the outline of the union of the shapes stays visible
        out += [f'{s} fill="{fill}" stroke="{stroke}" stroke-width="3"/>' for s in shapes]
        out += [f'{s} fill="{fill}"/>' for s in shapes]
        if group in lay.label_at:
            x, y, w = lay.label_at[group]
            label = _esc(_fit(group, w, 7.2))
            out.append(f'<text class="group-label" x="{x + 4:.1f}" y="{y:.1f}">{label}</text>')
        out.append("</g>")
    out.append('</g><g class="edges">')
    for up, down in graph.edges:
        x1, y1, w1, _ = lay.box[up]
        x2, y2, _, _ = lay.box[down]
        x1, y1, x2, y2 = x1 + w1, y1 + NODE_H / 2, x2 - 1, y2 + NODE_H / 2
        dx = max(30.0, (x2 - x1) / 2)
        out.append(
            f'<path class="edge" data-s="{ids[up]}" data-t="{ids[down]}" '
            f'd="M{x1:.1f},{y1:.1f} C{x1 + dx:.1f},{y1:.1f} {x2 - dx:.1f},{y2:.1f} '
            f'{x2:.1f},{y2:.1f}"/>'
        )
    out.append('</g><g class="nodes">')
    for node in nodes:
        x, y, w, h = lay.box[node.name]
        fill, stroke, label = _style(node.kind)
        info = f"{node.name}\n{label}" + (f" · dbt group {node.group}" if node.group else "")
        out.append(
            f'<g class="node" id="{ids[node.name]}" data-kind="{_esc(node.kind)}" '
            f'data-name="{_esc(node.name)}"><title>{_esc(info)}</title>'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="6" '
            f'fill="{fill}" stroke="{stroke}"/>'
            f'<text class="kind" x="{x + 9:.1f}" y="{y + 13:.1f}" fill="{stroke}">{_esc(label)}'
            f'</text><text class="name" x="{x + 9:.1f}" y="{y + 29:.1f}">'
            f"{_esc(_fit(node.name, w, CHAR_W))}</text></g>"
        )
    out.append("</g>")
    return out


def _legend(nodes: Sequence[GraphNode]) -> list[tuple[str, str, str, str]]:
    """(fill, stroke, label, kind) for each kind present, in a fixed order, then dbt groups."""
    present = dict.fromkeys(n.kind for n in nodes)
    kinds = [k for k in KIND_STYLES if k in present] + [k for k in present if k not in KIND_STYLES]
    entries = [(*_style(k), k) for k in kinds]
    if any(n.group is not None for n in nodes):
        entries.append((*_GROUP_TINTS[0], "dbt group (one dbt invocation)", "group"))
    return entries


_PAGE_CSS = """
body{margin:0;font:14px system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;color:#0f172a}
header{padding:14px 24px;border-bottom:1px solid #e2e8f0;background:#f8fafc}
h1{font-size:18px;margin:0 0 6px}.meta{color:#475569;margin:0 0 8px}
.legend{display:flex;flex-wrap:wrap;gap:14px;list-style:none;margin:0;padding:0}
.legend li{display:flex;align-items:center;gap:6px}
.swatch{width:14px;height:14px;border-radius:3px;border:1.5px solid;display:inline-block}
#info{margin-left:12px;color:#334155}#fit{margin-top:10px;font:inherit}
main{overflow:auto;padding:8px}svg.fit{max-width:100%;height:auto}
"""

_PAGE_JS = """
(function(){
  var svg=document.querySelector('svg.mage-graph'),info=document.getElementById('info');
  if(!svg)return;
  var btn=document.getElementById('fit');
  function fit(on){svg.classList.toggle('fit',on);btn.textContent=on?'Actual size':'Fit to width';}
  btn.addEventListener('click',function(){fit(!svg.classList.contains('fit'));});
  fit(svg.width.baseVal.value*0.6<=svg.parentNode.clientWidth);
  var edges=[].slice.call(svg.querySelectorAll('.edge')),up={},down={};
  var nodes=[].slice.call(svg.querySelectorAll('.node'));
  edges.forEach(function(e){var s=e.dataset.s,t=e.dataset.t;
    (down[s]=down[s]||[]).push(t);(up[t]=up[t]||[]).push(s);});
  function walk(start,adj){var seen={},stack=[start];while(stack.length){
    (adj[stack.pop()]||[]).forEach(function(m){if(!seen[m]){seen[m]=1;stack.push(m);}});}return seen;}
  nodes.forEach(function(node){
    node.addEventListener('mouseenter',function(){
      var id=node.id,a=walk(id,up),d=walk(id,down);
      svg.classList.add('focus');node.classList.add('self');
      nodes.forEach(function(n){n.classList.toggle('hl',n.id===id||!!a[n.id]||!!d[n.id]);});
      edges.forEach(function(e){var s=e.dataset.s,t=e.dataset.t;
        e.classList.toggle('hl',!!((a[s]&&(t===id||a[t]))||(d[t]&&(s===id||d[s]))));});
      info.textContent=node.dataset.name+' \\u2014 '+Object.keys(a).length+' upstream, '+
        Object.keys(d).length+' downstream';
    });
    node.addEventListener('mouseleave',function(){
      svg.classList.remove('focus');node.classList.remove('self');info.textContent='';
    });
  });
})();
"""


def render_html(nodes: Sequence[GraphNode], title: str = "Pipeline graph") -> str:
    """A self-contained page: inline SVG, legend, hover highlighting; no external resources."""
    nodes = list(nodes)
    svg = _svg(nodes, legend=False, title=None, xmlns=False)
    groups = len({n.group for n in nodes if n.group is not None})
    links = sum(len(set(n.upstream)) for n in nodes)
    items = [
        f'<li data-kind="{_esc(kind)}"><span class="swatch" style="background:{fill};'
        f'border-color:{stroke}"></span>{_esc(label)}</li>'
        for fill, stroke, label, kind in _legend(nodes)
    ]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_PAGE_CSS}</style></head><body>\n"
        f'<header><h1>{_esc(title)}</h1><p class="meta">{len(nodes)} blocks · {links} links · '
        f'{groups} dbt groups · hover a block to see its upstream and downstream</p>'
        f'<ul class="legend">{"".join(items)}</ul><button id="fit" type="button"></button>'
        '<span id="info"></span></header>\n'
        f"<main>{svg}</main>\n<script>{_PAGE_JS}</script></body></html>\n"
    )


def render_to_file(nodes: Sequence[GraphNode], path: str | Path, title: str | None = None) -> Path:
    """Write the picture to `path`; the format follows the suffix (.svg, .html or .htm)."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix == ".svg":
        text = render_svg(nodes, title=title)
    elif suffix in (".html", ".htm"):
        text = render_html(nodes, title or target.stem)
    else:
        raise ConfigError(
            f"cannot draw the graph to {str(target)!r}: unknown format {suffix or '(no suffix)'!r}",
            hint="name the output file .svg or .html",
        )
    from mage_dbt.files import write_atomically

    return write_atomically(target, text)  # a failed write leaves no half picture behind


def without_kind(nodes: Sequence[GraphNode], kind: str) -> tuple[list[GraphNode], int]:
    """`nodes` without those of `kind` (dbt tests crowd a picture: most boxes of the demo); a block
    downstream of a hidden one keeps the hidden one's upstreams instead. Returns (nodes, hidden)."""
    hidden = {n.name: n for n in nodes if n.kind == kind}

    def visible(names: Sequence[str], seen: frozenset[str] = frozenset()) -> list[str]:
        out: list[str] = []
        for name in names:
            if name not in hidden:
                out.append(name)
            elif name not in seen:
                out.extend(visible(hidden[name].upstream, seen | {name}))
        return out

    kept = [replace(n, upstream=tuple(dict.fromkeys(visible(n.upstream)))) for n in nodes if n.name not in hidden]
    return kept, len(hidden)
