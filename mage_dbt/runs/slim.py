"""`--changed`: a run of only the dbt nodes modified since the last successful run on a target, and
their downstream (`state:modified+`), deferring to that run's relations for parents it does not build.

The emergency path: fix one model on a branch, run just it and what depends on it. The state is
the manifest kept by the last successful full run of a pipeline on the state target (by default
the run's own target; `state_target` names another, e.g. production while running on dev).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from mage_dbt.dbt.slim import modified_ids
from mage_dbt.dbt.state_store import StateStore, state_dir
from mage_dbt.errors import ConfigError
from mage_dbt.pipelines.pipeline import restrict


def state_manifest_dir(settings: Any, pipeline: Any, state_target: str | None) -> Path:
    """The folder holding the state manifest for a `--changed` run of `pipeline` (must exist)."""
    from mage_dbt.warehouse.catalog import target_config

    if pipeline.manifest is None:
        raise ConfigError(f"pipeline '{pipeline.name}' has no dbt nodes: --changed selects dbt nodes only",
                          hint="run it without --changed")
    ref = pipeline.manifest.ref
    name = state_target or target_config(ref).target_name
    store = StateStore(state_dir(settings.data_dir, ref.name, name))
    if not store.has_manifest():
        raise ConfigError(
            f"--changed: no successful run of dbt project '{ref.name}' is recorded on target '{name}'",
            hint="run the pipeline once without --changed on that target (or name another with --state-target)")
    return store.manifest_dir


def changed_only(settings: Any, pipeline: Any, context: Any, state_target: str | None) -> tuple[Any, Any]:
    """`pipeline` restricted to its modified dbt nodes and their downstream; `context` deferring."""
    folder = state_manifest_dir(settings, pipeline, state_target)
    ids = modified_ids(pipeline.manifest, folder)
    names = {name for name, block in pipeline.blocks.items() if block.unique_id in ids}
    return restrict(pipeline, names), replace(context, defer_state=str(folder))
