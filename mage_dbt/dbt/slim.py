"""Slim runs: which nodes changed since a state manifest, by dbt's own `state:modified+` selector.

The state manifest is the one `mage_dbt.dbt.state_store` keeps from the last successful full run on
a target. dbt compares the cached, parsed manifest of this revision with it (file checksums,
configs, macros), in-process: no `dbt ls`. The run then passes `--defer --state <dir>` (see
`RunContext.defer_state`), so refs to parents this run does not build resolve to the relations
recorded in that manifest when the run's own target does not have them.
"""

from __future__ import annotations

from pathlib import Path

from mage_dbt.dbt.invocation import dbt_lock, working_directory
from mage_dbt.dbt.manifest import LoadedManifest
from mage_dbt.dbt.selection_cache import ensure_dbt_flags
from mage_dbt.errors import ConfigError

MODIFIED = "state:modified+"


def modified_ids(loaded: LoadedManifest, state_dir: Path, selector: str = MODIFIED) -> set[str]:
    """Unique ids `selector` (default: `state:modified+`) picks against the manifest in `state_dir`."""
    ensure_dbt_flags()
    from dbt.contracts.state import PreviousState
    from dbt.graph import Graph, NodeSelector
    from dbt.graph.cli import parse_difference

    _behaviour_flags_defaults()
    manifest = loaded.dbt_manifest
    previous = PreviousState(state_path=state_dir, target_path=loaded.ref.target_path,
                             project_root=loaded.ref.project_dir)
    if previous.manifest is None:
        raise ConfigError(f"no manifest.json in {state_dir}", hint="run the pipeline once without --changed")
    spec = parse_difference([selector], None)
    with dbt_lock(), working_directory(loaded.ref.project_dir):
        chosen = NodeSelector(Graph(loaded.dbt_graph()), manifest, previous_state=previous).get_selected(
            spec, warn_on_no_nodes=False)
    return {uid for uid in chosen if uid in loaded.nodes and loaded.nodes[uid].resource_type != "source"}


def _behaviour_flags_defaults() -> None:
    """dbt's state comparison reads project behaviour flags that only a full CLI invocation sets;
    outside one they take dbt's defaults."""
    from dbt.flags import get_flags

    flags = get_flags()
    for name in ("state_modified_compare_more_unrendered_values", "state_modified_compare_vars"):
        if not hasattr(flags, name):
            object.__setattr__(flags, name, False)
