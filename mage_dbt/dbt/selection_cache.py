"""Selections remembered per manifest: the node ids dbt's selector picked for a `--select`/`--exclude`
pair, kept beside the manifest cache entry (`selections.json`) so the next run of the pipeline knows
its nodes without importing dbt (about 2-4 s of a run's start-up on these machines: dbt's import,
its flags and its graph).

Safe because a selection is a function of the manifest alone, which the cache entry's key already
pins (project files, profile, target, parse-time vars, dbt version), plus, for `path:` selectors,
the project folder the entry belongs to, and dbt's indirect-selection setting (`DBT_INDIRECT_SELECTION`,
part of the key here). Selectors that read files outside the manifest are never remembered:
`state:` (the state artifacts), `result:` (run_results.json) and `source_status:` (sources.json).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from mage_dbt.errors import SelectionError

FILE = "selections.json"
OUTSIDE_THE_MANIFEST = ("state:", "result:", "source_status:")


def selection_key(select: Optional[Sequence[str]], exclude: Optional[Sequence[str]]) -> Optional[str]:
    """The key a selection is remembered under (None: it reads files outside the manifest)."""
    selectors = [*(select or ()), *(exclude or ())]
    if any(method in s for s in selectors for method in OUTSIDE_THE_MANIFEST):
        return None
    return json.dumps([list(select or ()), list(exclude or ()), os.environ.get("DBT_INDIRECT_SELECTION", "")])


def recall(folder: Path, key: str) -> Optional[set[str]]:
    """The node ids remembered under `key` in the cache entry `folder` (None: not remembered)."""
    try:
        found = json.loads((folder / FILE).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return set(found) if isinstance(found, list) else None


def remember(folder: Path, key: str, chosen: set[str]) -> None:
    """Keep `chosen` under `key`; best effort (a read-only or vanished cache folder only costs a re-select)."""
    path = folder / FILE
    try:
        known = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(known, dict):
            known = {}
        known[key] = sorted(chosen)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, path)
    except (OSError, ValueError):
        pass


def select_nodes(loaded: Any, select: Optional[Sequence[str]], exclude: Optional[Sequence[str]]) -> set[str]:
    """The node ids (sources left out) dbt's selector picks from `loaded` (a LoadedManifest),
    remembered in its cache entry when the selection depends on the manifest alone."""
    key = selection_key(select, exclude)
    remembered = recall(loaded.cache_folder, key) if key else None
    if remembered is not None and remembered <= loaded.nodes.keys():
        return remembered
    chosen = _select_with_dbt(loaded, select, exclude)
    if key:
        remember(loaded.cache_folder, key, chosen)
    return chosen


def _select_with_dbt(loaded: Any, select: Optional[Sequence[str]], exclude: Optional[Sequence[str]]) -> set[str]:
    from dbt.graph import Graph, NodeSelector
    from dbt.graph.cli import parse_difference

    from mage_dbt.dbt.invocation import dbt_lock, working_directory

    ensure_dbt_flags()
    graph = loaded.dbt_graph()
    try:
        spec = parse_difference(list(select) if select else None, list(exclude) if exclude else None)
        # dbt resolves `path:` selectors against the working directory, as its CLI runs there.
        with dbt_lock(), working_directory(loaded.ref.project_dir):
            chosen = NodeSelector(Graph(graph), loaded.dbt_manifest).get_selected(spec, warn_on_no_nodes=False)
    except Exception as exc:  # dbt raises a zoo of types for malformed selectors
        raise SelectionError(
            f"invalid dbt selector {list(select) if select else select!r}: {str(exc).splitlines()[0]}",
            hint="use dbt's selector syntax, e.g. 'tag:daily', '+fct_orders', 'path:models/staging'",
        ) from None
    return {uid for uid in chosen if uid in loaded.nodes and loaded.nodes[uid].resource_type != "source"}


def ensure_dbt_flags() -> None:
    """dbt's global flags, set once: its selector reads them."""
    from argparse import Namespace

    from dbt.flags import get_flags, set_from_args

    if not hasattr(get_flags(), "INDIRECT_SELECTION"):
        set_from_args(Namespace(), {})
