"""The shortest dbt `--select` list that picks exactly a given set of nodes.

A group run hands dbt its exact node list. One FQN selector per node is always exact, but dbt
matches every selector against every node of the project, so N selectors cost N x (project size)
matches: about a second of CPU for 200 models. Most groups are whole folders or whole projects, so
we walk the FQN tree and use a folder's prefix (`bench.staging`) wherever every node under it is
wanted. The shortened list is checked with dbt's own FQN matcher before it is used; if it would
pick anything else (a node of another package whose path looks alike, a model named like a
folder), the per-node list is used instead.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Sequence

# Manifest collections dbt's FQN selector method looks at (its `non_source_nodes`).
_FQN_COLLECTIONS = ("nodes", "exposures", "metrics", "unit_tests", "semantic_models", "saved_queries", "functions")


def compact_selectors(manifest: Any, unique_ids: Sequence[str]) -> list[str] | None:
    """Fewer FQN selectors than nodes that pick exactly `unique_ids` from `manifest` (dbt's
    Manifest), checked with dbt's own matcher; None when no shorter exact list exists."""
    candidates = _fqn_candidates(manifest)
    wanted = set(unique_ids)
    if not wanted or not wanted <= candidates.keys():
        return None
    compact = shortest_prefixes(candidates, wanted)
    if len(compact) < len(wanted) and _selects_exactly(manifest, candidates, compact, wanted):
        return compact
    return None


def shortest_prefixes(candidates: dict[str, tuple[str, ...]], wanted: set[str]) -> list[str]:
    """For each wanted node, the shortest FQN prefix under which every candidate is wanted."""
    total: Counter[tuple[str, ...]] = Counter()
    chosen: Counter[tuple[str, ...]] = Counter()
    for unique_id, fqn in candidates.items():
        for prefix in _prefixes(fqn):
            total[prefix] += 1
            if unique_id in wanted:
                chosen[prefix] += 1
    selectors: dict[str, None] = {}
    for unique_id in sorted(wanted, key=lambda u: candidates[u]):
        prefix = next(p for p in _prefixes(candidates[unique_id]) if total[p] == chosen[p])
        selectors[".".join(prefix)] = None
    return list(selectors)


def _prefixes(fqn: tuple[str, ...]) -> Iterable[tuple[str, ...]]:
    return (fqn[:i] for i in range(1, len(fqn) + 1))


def _fqn_candidates(manifest: Any) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for name in _FQN_COLLECTIONS:
        for unique_id, node in (getattr(manifest, name, None) or {}).items():
            fqn = getattr(node, "fqn", None)
            if fqn:
                out[unique_id] = tuple(fqn)
    return out


def _selects_exactly(manifest: Any, candidates: dict, selectors: list[str], wanted: set[str]) -> bool:
    """Ask dbt's own FQN selector method what `selectors` pick, and compare."""
    from dbt.graph.selector_methods import QualifiedNameSelectorMethod

    method = QualifiedNameSelectorMethod(manifest, None, [])
    everything = set(candidates)
    picked: set[str] = set()
    for selector in selectors:
        picked.update(method.search(everything, selector))
    return picked == wanted
