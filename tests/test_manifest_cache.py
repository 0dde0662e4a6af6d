"""Parse once: the manifest is parsed at most once per project revision and target, cached on
disk for other processes, and invalidated when a project file changes."""

from __future__ import annotations

import json

import pytest

from mage_dbt.dbt.manifest import ManifestCache
from mage_dbt.pipelines.pipeline import load_pipeline
from mage_dbt.pipelines.spec import dbt_project_ref
from mage_dbt.pipelines.spec import load_pipeline_spec
from mage_dbt.settings import load_settings


def _parses(settings) -> int:
    log = settings.data_dir / "logs" / "dbt_invocations.jsonl"
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if json.loads(line)["command"] == "parse")


@pytest.fixture
def settings(demo_project, monkeypatch):
    monkeypatch.setenv("MAGE_DBT_DATA_DIR", str(demo_project / ".mage_dbt"))
    return load_settings(demo_project)


def test_manifest_parsed_once_then_served_from_cache(settings):
    spec = load_pipeline_spec(settings.flows_dir, "demo")
    ref = dbt_project_ref(settings, spec, None)
    first = ManifestCache().load(ref)
    assert _parses(settings) == 1
    kinds = {node.resource_type for node in first.nodes.values()}
    assert {"model", "seed", "snapshot", "test", "source"} <= kinds | {"source"}
    assert {"model", "seed", "snapshot", "test"} <= kinds

    # A new cache object behaves like a new process: it reads the on-disk cache, no parse.
    second = ManifestCache().load(ref)
    assert second.key == first.key and _parses(settings) == 1
    assert second.nodes == first.nodes

    # Changing a model changes the key and parses again.
    model = ref.project_dir / "models" / "staging" / "stg_orders.sql"
    model.write_text(model.read_text() + "\n-- a comment changes the revision\n")
    third = ManifestCache().load(ref)
    assert third.key != first.key and _parses(settings) == 2


def test_blocks_follow_manifest_dependencies(settings):
    pipeline = load_pipeline(settings, "demo")
    nodes = pipeline.manifest.nodes
    for block in pipeline.blocks.values():
        if block.unique_id:
            expected = {pipeline.blocks_by_id[u] for u in nodes[block.unique_id].depends_on if u in pipeline.blocks_by_id}
            assert expected <= set(block.upstream), block.name
    assert "stg_orders" in pipeline.blocks["fct_orders"].upstream
    assert pipeline.blocks["raw_orders"].kind == "dbt_seed"
    assert pipeline.blocks["customers_snapshot"].kind == "dbt_snapshot"


def test_dbt_selector_syntax_selects_blocks(settings):
    pipeline = load_pipeline(settings, "demo", select=["+fct_daily_revenue"])
    assert {"fct_daily_revenue", "stg_orders", "raw_orders"} <= set(pipeline.blocks)
    assert "dim_customers" not in pipeline.blocks


def test_a_selection_is_remembered_per_manifest_and_a_new_process_needs_no_dbt_for_it(settings, demo_project):
    """`mage_dbt.dbt.selection_cache`: the second process gets the same nodes without importing
    dbt's selector; `state:` selections are never remembered."""
    import subprocess
    import sys

    from mage_dbt.dbt.selection_cache import selection_key

    spec = load_pipeline_spec(settings.flows_dir, "demo")
    ref = dbt_project_ref(settings, spec, None)
    chosen = ManifestCache().load(ref).select(["+fct_daily_revenue", "path:models/staging"], ["stg_customers"])
    assert "model.demo.fct_daily_revenue" in chosen and "model.demo.stg_orders" in chosen and "model.demo.stg_customers" not in chosen

    code = f"""
import json, sys
from pathlib import Path
from mage_dbt.dbt.manifest import ManifestCache
from mage_dbt.pipelines.spec import dbt_project_ref, load_pipeline_spec
from mage_dbt.settings import load_settings
settings = load_settings(Path({str(demo_project)!r}))
ref = dbt_project_ref(settings, load_pipeline_spec(settings.flows_dir, "demo"), None)
chosen = ManifestCache().load(ref).select(["+fct_daily_revenue", "path:models/staging"], ["stg_customers"])
print(json.dumps([sorted(chosen), "dbt.graph" in sys.modules]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=demo_project)
    assert out.returncode == 0, out.stderr[-2000:]
    again, imported_dbt = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(again) == chosen and imported_dbt is False
    assert selection_key(["state:modified+"], None) is None and selection_key(None, ["result:error"]) is None
    assert selection_key(["tag:daily"], None) is not None
