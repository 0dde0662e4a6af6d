"""State keys read from manifest.json (`LoadedManifest.view`) equal the keys read from dbt's own
Manifest, node for node, on the demo project (seeds, snapshots, incremental and microbatch models,
tests, sources); and computing them does not import dbt's node classes (the ~0.7 s a run whose every
node is reused no longer pays)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def demo_loaded(demo_template):
    from mage_dbt.dbt.manifest import DbtProjectRef, load_manifest

    ref = DbtProjectRef(name="demo", project_dir=demo_template / "dbt_projects" / "demo",
                        profiles_dir=demo_template, data_dir=demo_template / ".mage_dbt", target="duckdb")
    return load_manifest(ref)


def _inputs(ids, sources):
    from mage_dbt.dbt.state_keys import KeyInputs

    return KeyInputs(run_vars={"execution_date": "2024-02-01"}, interval="2024-02-01/2024-02-02", environment="env",
                     built_here=frozenset(ids), source_versions={s: "v1" for s in sources},
                     event_time="2024-02-01/2024-02-02")


def test_keys_from_manifest_json_equal_keys_from_dbts_manifest(demo_loaded):
    from mage_dbt.dbt.manifest_view import ManifestView
    from mage_dbt.dbt.state_keys import KeyComputer, source_queries, upstream_sources

    view, dbt_manifest = demo_loaded.view, demo_loaded.dbt_manifest
    assert isinstance(view, ManifestView)
    ids = sorted(dbt_manifest.nodes)
    kinds = {dbt_manifest.nodes[u].resource_type for u in ids}
    assert {"seed", "snapshot", "model", "test"} <= kinds
    assert any(getattr(dbt_manifest.nodes[u].config, "incremental_strategy", None) == "microbatch" for u in ids)
    inputs = _inputs(ids, dbt_manifest.sources)
    from_json, from_dbt = KeyComputer(view, inputs).keys(ids), KeyComputer(dbt_manifest, inputs).keys(ids)
    assert {u: k.key for u, k in from_json.items()} == {u: k.key for u, k in from_dbt.items()}
    assert from_json == from_dbt  # parts and reasons too
    assert sum(1 for k in from_json.values() if k.key) > len(ids) // 2  # most demo nodes have a key
    assert upstream_sources(view, ids) == upstream_sources(dbt_manifest, ids) != []
    sources = sorted(dbt_manifest.sources)
    assert source_queries(view, sources) == source_queries(dbt_manifest, sources)


def test_keys_from_the_view_do_not_import_dbt(demo_loaded):
    code = f"""
import json, sys
from pathlib import Path
from mage_dbt.dbt.manifest_view import ManifestView
from mage_dbt.dbt.state_keys import KeyComputer, KeyInputs
view = ManifestView.read(Path({str(demo_loaded.manifest_json)!r}))
ids = list(view.nodes)
inputs = KeyInputs(run_vars={{}}, interval="a/b", environment="e", built_here=frozenset(ids))
keys = KeyComputer(view, inputs).keys(ids)
print(json.dumps([len(keys), sorted(m for m in sys.modules if m == "dbt" or m.startswith("dbt."))]))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    count, dbt_modules = json.loads(out.stdout)
    assert count == len(demo_loaded.view.nodes) > 50
    assert dbt_modules == []
