"""Exact node selection with folder prefixes: fewer `--select` entries, never a different node set.

The demo cases ask real dbt (`dbt ls` in-process on the cached manifest, indirect selection empty)
which nodes the shortened selector list picks, and compare with the wanted set.
"""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest

from mage_dbt.dbt.selection import compact_selectors, shortest_prefixes


def _manifest(*fqns: str, versioned: tuple[str, ...] = ()):
    nodes = {
        f"model.{fqn}": SimpleNamespace(fqn=fqn.split("/"), is_versioned=fqn in versioned)
        for fqn in fqns
    }
    return SimpleNamespace(nodes=nodes, exposures={}, metrics={}, unit_tests={}, semantic_models={},
                           saved_queries={}, functions={})


def test_whole_folders_become_one_prefix_each_and_mixed_folders_stay_per_node():
    m = _manifest("shop/staging/stg_a", "shop/staging/stg_b", "shop/marts/fct", "shop/marts/dim")
    assert compact_selectors(m, ["model.shop/staging/stg_a", "model.shop/staging/stg_b"]) == ["shop.staging"]
    everything = list(m.nodes)
    assert compact_selectors(m, everything) == ["shop"]
    # staging whole + one mart: two entries for three nodes
    wanted = ["model.shop/staging/stg_a", "model.shop/staging/stg_b", "model.shop/marts/fct"]
    assert sorted(compact_selectors(m, wanted)) == ["shop.marts.fct", "shop.staging"]
    # nothing to shorten: the caller keeps its per-node list
    assert compact_selectors(m, ["model.shop/staging/stg_a", "model.shop/marts/fct"]) is None


def test_a_prefix_that_dbt_would_match_elsewhere_is_never_used():
    # dbt also matches a selector against the FQN without its package: `shop` would pick
    # lib/shop/x of another package, so the shortened list is refused and per-node stays.
    m = _manifest("shop/staging/stg_a", "shop/staging/stg_b", "lib/shop/x")
    wanted = ["model.shop/staging/stg_a", "model.shop/staging/stg_b"]
    assert shortest_prefixes({u: tuple(n.fqn) for u, n in m.nodes.items()}, set(wanted)) == ["shop"]
    assert compact_selectors(m, wanted) is None


def test_unknown_or_empty_node_lists_are_left_to_the_caller():
    m = _manifest("shop/staging/stg_a", "shop/staging/stg_b")
    assert compact_selectors(m, []) is None
    assert compact_selectors(m, ["model.shop/staging/stg_a", "source.shop.raw.orders"]) is None


@pytest.fixture(scope="module")
def demo_loaded(demo_template):
    from mage_dbt.dbt.manifest import DbtProjectRef, load_manifest

    ref = DbtProjectRef(name="demo", project_dir=demo_template / "dbt_projects" / "demo",
                        profiles_dir=demo_template, data_dir=demo_template / ".mage_dbt", target="duckdb")
    return load_manifest(ref)


def _dbt_ls(loaded, selectors: list[str]) -> set[str]:
    from mage_dbt.dbt.invocation import invoke_dbt

    raw = invoke_dbt(
        ["ls", *loaded.ref.base_args(), "--select", *selectors, "--indirect-selection", "empty",
         "--resource-type", "all", "--output", "json", "--output-keys", "unique_id", "--log-level", "none"],
        manifest=loaded.dbt_manifest,
    )
    assert raw.success, raw.exception
    return {json.loads(line)["unique_id"] for line in raw.result}


def test_dbt_itself_selects_exactly_the_wanted_nodes_of_the_demo(demo_loaded):
    runnable = sorted(u for u, n in demo_loaded.nodes.items() if n.resource_type != "source")
    staging = [u for u in runnable if ".staging." in ".".join(demo_loaded.nodes[u].fqn) + "."]
    assert staging, "the demo has a staging folder"
    rng = random.Random(7)
    cases = {
        "everything": runnable,
        "staging": staging,
        "staging + one more": staging + [next(u for u in runnable if u not in staging)],
        "a random half": rng.sample(runnable, len(runnable) // 2),
    }
    shortened = 0
    for name, wanted in cases.items():
        selectors = compact_selectors(demo_loaded.dbt_manifest, wanted)
        if selectors is None:
            continue
        shortened += 1
        assert len(selectors) < len(wanted), name
        assert _dbt_ls(demo_loaded, selectors) == set(wanted), (name, selectors)
    assert shortened >= 3
