"""The demo pipeline's warehouse tables as Prefect assets, read back through the Prefect API (events):
one materialization per model, seed, snapshot and per table a Python block writes, keyed by the
relation (`duckdb://<db>/<schema>/<name>`, `postgres://<db>/<schema>/<name>`), whose upstream assets
are exactly the manifest's `depends_on` relations (dbt sources included, ephemeral models looked
through), with rows, seconds, materialization, execution date, description and owner; the lineage
connects the Python block that lands a source to the models reading it. Each block's events go
out as its task run ends, not after the run."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from tests.conftest import cli
from tests.support import dbt_changes, postgres
from tests.support.asset_events import flow_run_events, materializations, related, upstream
from tests.support.runs import duckdb_rows, flow_run_id, task_runs
from tests.test_run_artifacts import run_artifacts

ASSET_KINDS = ("dbt_model", "dbt_seed", "dbt_snapshot")


def _manifest(project) -> dict:
    """dbt's manifest.json of the run's revision (kept in the manifest cache)."""
    [path] = (project / ".mage_dbt" / "manifest_cache").glob("demo-*/manifest.json")
    return json.loads(path.read_text())


def _expected_keys(manifest: dict, adapter: str) -> dict[str, str]:
    """unique id -> asset key of every relation node and source of the manifest."""
    nodes = {**manifest["nodes"], **manifest["sources"]}
    return {uid: f"{adapter}://{n['database']}/{n['schema']}/{n.get('alias') or n.get('identifier') or n['name']}".lower()
            for uid, n in nodes.items() if n["resource_type"] in ("model", "seed", "snapshot", "source")
            and (n.get("config") or {}).get("materialized") != "ephemeral"}


def _upstream_of(manifest: dict, uid: str, keys: dict[str, str]) -> set[str]:
    nodes = {**manifest["nodes"], **manifest["sources"]}
    out, todo = set(), list(nodes[uid]["depends_on"].get("nodes", []))
    while todo:
        dep = todo.pop()
        if dep in keys:
            out.add(keys[dep])
        elif dep in nodes and nodes[dep]["resource_type"] == "model":  # ephemeral: look through it
            todo += nodes[dep]["depends_on"].get("nodes", [])
    return out


def _run_and_check(project, adapter: str, env=None, flags=(), extra=None):
    result = cli(project, "run", "demo", "--execution-date", "2024-02-01", *flags, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_id = flow_run_id(result.stdout)
    summary = json.loads((project / ".mage_dbt" / "runs" / run_id / "summary.json").read_text())["results"]
    manifest = _manifest(project)
    keys = _expected_keys(manifest, adapter)
    dbt_blocks = {n: r for n, r in summary.items() if r["kind"] in ASSET_KINDS}
    landing = keys["source.demo.landing.orders"]
    expected = {keys[r["unique_id"]]: n for n, r in dbt_blocks.items()} | {landing: "land_orders"} | (extra or {})
    found = materializations(run_id, len(expected))
    assert set(found) == set(expected), (set(expected) ^ set(found))
    runs = task_runs(run_id)
    for key, block in expected.items():
        event, result_ = found[key], summary[block]
        assert event["event"] == "prefect.asset.materialization.succeeded"
        payload = event["payload"]
        assert payload["execution_date"].startswith("2024-02-01")
        assert payload["seconds"] == result_["seconds"] and payload.get("rows_affected") == result_["rows"]
        assert related(event, "asset-materialized-by")[0]["prefect.resource.id"] == "mage-dbt"
        assert related(event, "task-run")[0]["prefect.resource.id"] == f"prefect.task-run.{runs[block].id}"
        assert {r["prefect.resource.id"] for r in related(event, "flow-run")} == {f"prefect.flow-run.{run_id}"}
        if block in dbt_blocks:  # upstream assets = the manifest's depends_on relations
            assert upstream(event) == _upstream_of(manifest, result_["unique_id"], keys), block
    # Lineage across kinds: the Python block lands the source that landed_orders_daily reads.
    assert landing in upstream(found[keys["model.demo.landed_orders_daily"]])
    assert upstream(found[landing]) == set()  # load_orders keeps a DataFrame, not a table
    # Metadata from the manifest: materialization, description, owner (dbt_project.yml's +meta).
    fct_orders = found[keys["model.demo.fct_orders"]]
    assert fct_orders["payload"]["materialization"] == "incremental"
    assert fct_orders["resource"]["prefect.resource.name"] == "fct_orders"
    assert fct_orders["resource"]["prefect.asset.description"].startswith("Current state of each order")
    assert json.loads(fct_orders["resource"]["prefect.asset.owners"]) == ["shop-analytics"]
    assert found[keys["seed.demo.raw_orders"]]["payload"]["materialization"] == "seed"
    # The run summary artifact lists the same lineage (the open-source UI has no asset pages).
    [artifact] = run_artifacts(run_id)
    written = {m.group(1): (m.group(2), set(re.findall(r"`([^`]+)`", m.group(3))))
               for m in re.finditer(r"^\| `([^`]+)` \| (\S+) \| succeeded \| (.*) \|$", artifact.data, re.M)}
    assert written == {key: (block, upstream(found[key])) for key, block in expected.items()}
    # Every upstream asset is announced once per run as referenced (a source the run only reads, too).
    referenced = [e["resource"]["prefect.resource.id"] for e in flow_run_events(run_id)
                  if e["event"] == "prefect.asset.referenced"]
    assert sorted(referenced) == sorted({k for e in found.values() for k in upstream(e)})
    # A block's events are queued as its task run ends, while the run goes on (not all after it).
    first_event = min(datetime.fromisoformat(e["occurred"]) for e in found.values())
    assert first_event < max(r.end_time for r in runs.values() if r.end_time is not None)
    return keys, found


REVENUE_REPORT = """select r.revenue_date, r.revenue, c.customers
from {{ ref('fct_daily_revenue') }} as r
cross join (select count(*) as customers from {{ ref('dim_customers') }}) as c
"""


def test_demo_assets_lineage_and_metadata_duckdb(demo_project):
    # A SQL block materializing a table: an asset too, downstream of the two models it reads.
    dbt_changes.write(demo_project, "flows/demo/revenue_report.sql", REVENUE_REPORT)
    dbt_changes.add_blocks(demo_project, "demo", {"name": "revenue_report", "type": "sql",
                                                  "file": "flows/demo/revenue_report.sql",
                                                  "materialize": "table", "table": "revenue_report",
                                                  "schema": "reports"})
    keys, found = _run_and_check(demo_project, "duckdb", extra={"duckdb://demo/reports/revenue_report": "revenue_report"})
    report = found["duckdb://demo/reports/revenue_report"]
    assert upstream(report) == {keys["model.demo.fct_daily_revenue"], keys["model.demo.dim_customers"]}
    assert report["payload"]["materialization"] == "sql"
    assert duckdb_rows(demo_project, "select count(*) from reports.revenue_report") == [(1,)]
    assert keys["model.demo.fct_orders"] == "duckdb://demo/main/fct_orders"
    # dbt-duckdb reports rows affected for seeds only (its adapter response has none for models).
    rows = duckdb_rows(demo_project, "select count(*) from main_raw.raw_orders")[0][0]
    assert found[keys["seed.demo.raw_orders"]]["payload"]["rows_affected"] == rows


def test_demo_assets_lineage_and_metadata_postgres(demo_project, pg_env):
    dbt_changes.reset_pg_schemas(pg_env)
    keys, found = _run_and_check(demo_project, "postgres", env=pg_env, flags=("--target", "pg"))
    assert keys["model.demo.fct_orders"] == f"postgres://{pg_env['PGDATABASE']}/analytics/fct_orders"
    rows = postgres.query(pg_env, "select count(*) from analytics.fct_orders")[0][0]
    assert found[keys["model.demo.fct_orders"]]["payload"]["rows_affected"] == rows  # first run: every row


@pytest.mark.parametrize("key, expected", [
    (("duckdb", "demo", "main", "fct_orders"), "duckdb://demo/main/fct_orders"),
    (("postgres", "Test", '"Analytics"', "Orders"), "postgres://test/analytics/orders"),
    (("duckdb", None, "main", "a b%#"), "duckdb://main/a_b__"),
])
def test_relation_keys_are_valid_prefect_asset_keys(key, expected):
    from prefect.assets import Asset

    from mage_dbt.runs.assets import relation_key

    assert Asset(key=relation_key(*key)).key == expected


def test_owner_is_meta_owner_else_the_dbt_groups_owner():
    from mage_dbt.dbt.nodes import nodes_from_manifest_dict

    base = {"resource_type": "model", "package_name": "shop", "fqn": ["shop", "m"], "config": {}}
    manifest = {
        "groups": {"group.shop.finance": {"owner": {"name": None, "email": "finance@shop.example"}}},
        "nodes": {
            "model.shop.a": {**base, "unique_id": "model.shop.a", "name": "a", "meta": {"owner": "ana"},
                             "group": "finance", "description": "  A table.  "},
            "model.shop.b": {**base, "unique_id": "model.shop.b", "name": "b", "group": "finance"},
            "model.shop.c": {**base, "unique_id": "model.shop.c", "name": "c",
                             "config": {"meta": {"owner": "cfg"}}},
            "model.shop.d": {**base, "unique_id": "model.shop.d", "name": "d", "description": ""},
        },
    }
    nodes = nodes_from_manifest_dict(manifest)
    assert {u: n.owner for u, n in nodes.items()} == {
        "model.shop.a": "ana", "model.shop.b": "finance@shop.example", "model.shop.c": "cfg", "model.shop.d": None}
    assert (nodes["model.shop.a"].description, nodes["model.shop.d"].description) == ("A table.", None)


def test_a_reused_node_reports_no_materialization(demo_template):
    """A node reused by `reuse:` did not write its table: no materialization event, so an asset's
    last materialization (and an automation on it) stays the run that really built it."""
    from mage_dbt.pipelines.pipeline import load_pipeline
    from mage_dbt.runs.assets import materializations
    from mage_dbt.runs.block_results import SUCCESS, BlockResult, RunSummary
    from mage_dbt.settings import load_settings

    pipeline = load_pipeline(load_settings(demo_template), "demo")
    summary = RunSummary(pipeline="demo", execution_date="2024-02-01")
    for name, reused in (("stg_orders", False), ("fct_orders", True)):
        block = pipeline.blocks[name]
        summary.results[name] = BlockResult(name=name, kind=block.kind, status=SUCCESS, unique_id=block.unique_id,
                                            reused=reused)
    found = materializations(pipeline, summary, "duckdb")
    assert [(m.block, m.key.rsplit("/", 1)[-1]) for m in found] == [("stg_orders", "stg_orders")]
