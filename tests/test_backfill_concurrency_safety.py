"""`backfill --concurrency N` refuses, before anything is recorded or started, a pipeline whose
blocks every interval rebuilds whole (tables, views, seeds, snapshots): two intervals rebuilding one
relation at once collided on Postgres (`relation "customers__dbt_backup" already exists`, issue 13).
The one error line names the blocks and the fixes; the narrowed pipeline is accepted."""

from __future__ import annotations

import shutil

from tests.conftest import cli
from tests.support import postgres
from tests.support.fixture_projects import copy_fixture
from tests.test_backfill_cli import _no_flow_runs
from tests.test_backfill_support import backfill_ids

PIPELINE = "concshop"  # a name of its own: no other test's flow runs carry it
RANGE = ["--start", "2024-01-01", "--end", "2024-01-03"]


def test_concurrency_is_refused_for_blocks_rebuilt_whole_by_every_interval(tmp_path, pg_env):
    project = copy_fixture("shop_mixed", tmp_path / "shop")
    shutil.copy(project / "flows" / "shop.yaml", project / "flows" / f"{PIPELINE}.yaml")

    result = cli(project, "backfill", PIPELINE, *RANGE, "--concurrency", "2", "--target", "pg", env=pg_env)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        'error: --concurrency 2 would run these blocks for several intervals at once, but they are not written '
        'one interval at a time (concurrent rebuilds of one relation collide, e.g. relation "<name>__dbt_backup" '
        'already exists): customer_snapshot (snapshot), customer_totals (table), large_sales (view), '
        'raw_sales (seed) — run with --concurrency 1, or backfill only the incremental models '
        f'(--select daily_sales), or exclude those blocks from the pipeline (dbt: exclude: in flows/{PIPELINE}.yaml)'
    ]
    assert "backfill " not in result.stdout  # it never started
    # nothing left behind: no backfill record or lock, no flow run, nothing in the warehouse
    assert backfill_ids(project) == []
    assert not list((project / ".mage_dbt").glob("backfills/*"))
    _no_flow_runs(PIPELINE)
    assert postgres.query(pg_env, "select schema_name from information_schema.schemata "
                                  "where schema_name like 'shop%'") == []

    # the fix the message names is accepted (a dry run: the same checks, nothing runs)
    narrowed = cli(project, "backfill", PIPELINE, *RANGE, "--concurrency", "2", "--select", "daily_sales",
                   "--target", "pg", "--dry-run", env=pg_env)
    assert narrowed.returncode == 0, narrowed.stdout[-3000:] + narrowed.stderr[-3000:]
    assert "3 intervals" in narrowed.stdout


def test_what_concurrent_intervals_may_run():
    """Per kind: incremental, ephemeral and tests may overlap; microbatch (dbt picks its batches from
    the current time, not the interval), tables, views, seeds, snapshots and SQL blocks that
    materialize a relation may not."""
    from types import SimpleNamespace

    from mage_dbt.backfill.safety import not_concurrent
    from mage_dbt.blocks.block import Block
    from mage_dbt.dbt.nodes import DbtNode
    from mage_dbt.pipelines.spec import BlockSpec

    def node(name, resource_type="model", materialized=None, strategy=None):
        return DbtNode(unique_id=f"{resource_type}.p.{name}", name=name, resource_type=resource_type,
                       package_name="p", original_file_path="", fqn=("p", name), depends_on=(),
                       materialized=materialized, incremental_strategy=strategy)

    nodes = [node("inc", materialized="incremental", strategy="delete+insert"),
             node("batches", materialized="incremental", strategy="microbatch"),
             node("inlined", materialized="ephemeral"), node("whole", materialized="table"),
             node("seen", materialized="view"), node("loaded", "seed"), node("history", "snapshot"),
             node("checked", "test", materialized="test")]
    blocks = {n.name: Block(name=n.name, kind=f"dbt_{n.resource_type}", unique_id=n.unique_id,
                            materialized=n.materialized) for n in nodes}
    for name, options in (("report", {"materialize": "table"}), ("rows", {})):
        spec = BlockSpec.model_validate({"name": name, "type": "sql", **options})
        blocks[name] = Block(name=name, kind="sql", spec=spec)
    pipeline = SimpleNamespace(name="p", blocks=blocks,
                               manifest=SimpleNamespace(nodes={n.unique_id: n for n in nodes}))
    assert not_concurrent(pipeline) == {
        "batches": "microbatch", "history": "snapshot", "loaded": "seed", "report": "sql block, materialize: table",
        "seen": "view", "whole": "table",
    }


def test_merge_models_get_a_warning_when_intervals_may_run_at_once():
    """A merge model keeps whichever interval's merge lands last: named in a warning for concurrent or
    pooled intervals, with depends_on_past as the fix; silent when intervals run one after another."""
    from types import SimpleNamespace

    from mage_dbt.backfill.safety import order_warning
    from mage_dbt.blocks.block import Block
    from mage_dbt.dbt.nodes import DbtNode

    nodes = [DbtNode(unique_id=f"model.p.{name}", name=name, resource_type="model", package_name="p",
                     original_file_path="", fqn=("p", name), depends_on=(), materialized="incremental",
                     incremental_strategy=strategy)
             for name, strategy in (("orders", "merge"), ("daily", "delete+insert"), ("appended", "append"))]
    blocks = {n.name: Block(name=n.name, kind="dbt_model", unique_id=n.unique_id, materialized=n.materialized)
              for n in nodes}

    def pipeline(depends_on_past=False):
        return SimpleNamespace(name="p", blocks=blocks, spec=SimpleNamespace(depends_on_past=depends_on_past),
                               manifest=SimpleNamespace(nodes={n.unique_id: n for n in nodes}))

    warning = order_warning(pipeline(), 2)
    assert warning is not None and warning.endswith(": orders. If a later interval must win, set "
                                                    "depends_on_past: true in flows/p.yaml")
    assert order_warning(pipeline(), 1, work_pool="pool") == warning
    assert order_warning(pipeline(), 1) is None
    assert order_warning(pipeline(depends_on_past=True), 1, work_pool="pool") is None
