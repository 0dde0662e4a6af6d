"""Reuse, sources' data versions and freshness gating (issue 17), on DuckDB and PostgreSQL: a source with a
`loaded_at_field` is versioned by `max(loaded_at_field)` — no new rows, its downstream is reused;
new rows, it runs — and a source a Python block writes is versioned by the recorded write, so the
models reading it run after every write. A source with neither always runs its downstream."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest

from tests.conftest import cli
from tests.test_backfill_support import write_pipeline
from tests.support.runs import flow_run_id, task_runs
from tests.test_reuse import DAY, _plan, _run, _states

SOURCES = """version: 2
sources:
  - name: ext
    schema: ext
    loaded_at_field: loaded_at
    freshness:
      warn_after: {count: 1, period: day}
    tables:
      - name: events
  - name: ext_untracked
    schema: ext
    tables:
      - name: clicks
"""
EVENTS_MODEL = ("select cast(loaded_at as date) as day, count(*) as events\n"
                "from {{ source('ext', 'events') }} group by 1\n")
CLICKS_MODEL = "select count(*) as clicks from {{ source('ext_untracked', 'clicks') }}\n"


def _add_sources(project: Path) -> None:
    folder = project / "dbt_projects" / "demo" / "models" / "ext"
    folder.mkdir()
    (folder / "_ext.yml").write_text(SOURCES)
    (folder / "events_daily.sql").write_text(EVENTS_MODEL)
    (folder / "clicks_total.sql").write_text(CLICKS_MODEL)
    write_pipeline(project, "events", ["events_daily", "clicks_total"], command="run", reuse=True)


def _duckdb(project: Path):
    def execute(sql: str) -> None:
        import duckdb

        with duckdb.connect(str(project / ".mage_dbt" / "demo.duckdb")) as conn:
            conn.execute(sql)
    return execute


def _postgres(env: dict):
    def execute(sql: str) -> None:
        conn = psycopg2.connect(host=env["PGHOST"], user=env["PGUSER"], dbname=env["PGDATABASE"])
        conn.autocommit = True
        with conn, conn.cursor() as cur:
            cur.execute(sql)
        conn.close()
    return execute


@pytest.mark.parametrize("warehouse", ["duckdb", "postgres"])
def test_loaded_at_field_decides_whether_downstream_runs(demo_project: Path, warehouse, request):
    project = demo_project
    _add_sources(project)
    if warehouse == "postgres":
        env = request.getfixturevalue("pg_env")
        execute, args = _postgres(env), ("--target", "pg")
        execute("drop schema if exists ext cascade")
    else:
        (project / ".mage_dbt").mkdir(exist_ok=True)
        env, execute, args = None, _duckdb(project), ()
    execute("create schema ext")
    execute("create table ext.events (id integer, loaded_at timestamp)")
    execute("create table ext.clicks (id integer)")
    execute("insert into ext.events values (1, '2024-01-02 08:00:00'), (2, '2024-01-02 09:00:00')")

    first = _states(_run(project, "events", "-d", DAY, *args, env=env))
    assert first == {"events_daily": "Completed", "clicks_total": "Completed"}

    unchanged = _states(_run(project, "events", "-d", DAY, *args, env=env))
    assert unchanged == {"events_daily": "Reused", "clicks_total": "Completed"}
    plan = _plan(project, "events", "-d", DAY, *args, env=env)
    assert plan["events_daily"][0] == "reuse"
    assert plan["clicks_total"][0] == "run" and "no loaded_at_field" in plan["clicks_total"][1]

    execute("insert into ext.events values (3, '2024-01-02 10:00:00')")
    plan = _plan(project, "events", "-d", DAY, *args, env=env)
    assert plan["events_daily"] == ("run", "upstream changed: ext.events")
    new_rows = _states(_run(project, "events", "-d", DAY, *args, env=env))
    assert new_rows["events_daily"] == "Completed"
    assert _states(_run(project, "events", "-d", DAY, *args, env=env))["events_daily"] == "Reused"


def test_a_source_written_by_a_python_block_runs_its_readers_after_each_write(demo_project: Path):
    project = demo_project
    text = (project / "flows" / "demo.yaml").read_text()
    landing = text.replace('select: ["*"]', 'select: ["landed_orders_daily"]')
    landing = landing.split("  - name: check_revenue")[0] + "reuse: true\n"
    (project / "flows" / "landing.yaml").write_text(landing)
    plan = _plan(project, "landing", "-d", DAY)
    assert plan["landed_orders_daily"][0] == "run"
    assert "written by block land_orders in this run" in plan["landed_orders_daily"][1]
    for _ in range(2):
        states = _states(_run(project, "landing", "-d", DAY))
        assert states["landed_orders_daily"] == "Completed" and states["land_orders"] == "Completed"
    records = (project / ".mage_dbt" / "state" / "demo" / "duckdb" / "state.json").read_text()
    assert '"main_landing.orders"' in records and '"block": "land_orders"' in records


GATED_SOURCES = """version: 2
sources:
  - name: feed
    schema: feed
    loaded_at_field: loaded_at
    freshness:
      warn_after: {count: 1, period: day}
    tables:
      - name: events
      - name: late
        freshness:
          error_after: {count: 1, period: day}
"""


def test_only_fresh_sources_skips_nodes_without_new_data_and_fails_past_error_threshold(demo_project: Path):
    from datetime import datetime, timezone

    import yaml

    from tests.test_backfill_support import invocations

    project = demo_project
    folder = project / "dbt_projects" / "demo" / "models" / "feed"
    folder.mkdir()
    (folder / "_feed.yml").write_text(GATED_SOURCES)
    (folder / "feed_daily.sql").write_text("select cast(loaded_at as date) as day, count(*) as n\n"
                                           "from {{ source('feed', 'events') }} group by 1\n")
    (folder / "feed_total.sql").write_text("select sum(n) as n from {{ ref('feed_daily') }}\n")
    (folder / "late_total.sql").write_text("select count(*) as n from {{ source('feed', 'late') }}\n")
    write_pipeline(project, "fresh", ["feed_daily", "feed_total"], command="run",
                   only_fresh_sources={"lag_seconds": 0})
    write_pipeline(project, "late", ["late_total"], command="run", only_fresh_sources=True)
    (project / ".mage_dbt").mkdir(exist_ok=True)
    execute = _duckdb(project)
    execute("create schema feed")
    execute("create table feed.events (id integer, loaded_at timestamp)")
    execute("create table feed.late (id integer, loaded_at timestamp)")
    execute("insert into feed.events values (1, '2024-01-02 08:00:00')")
    execute("insert into feed.late values (1, '2024-01-02 08:00:00')")

    assert set(_states(_run(project, "fresh", "-d", DAY)).values()) == {"Completed"}
    before = len(invocations(project))
    stale_run = _run(project, "fresh", "-d", DAY)
    stale = task_runs(stale_run)
    assert {n: r.state.name for n, r in stale.items()} == {"feed_daily": "Skipped", "feed_total": "Skipped"}
    assert "no new data in feed.events" in stale["feed_daily"].state.message
    assert [r["command"] for r in invocations(project)[before:]] == ["source freshness"]
    assert _plan(project, "fresh", "-d", DAY)["feed_total"][0] == "skip-stale"

    now = datetime.now(timezone.utc).replace(tzinfo=None).isoformat(sep=" ", timespec="seconds")
    execute(f"insert into feed.events values (2, '{now}')")
    assert set(_states(_run(project, "fresh", "-d", DAY)).values()) == {"Completed"}

    failed = cli(project, "run", "late", "-d", DAY)
    assert failed.returncode == 1, failed.stdout[-2000:] + failed.stderr[-2000:]
    [late] = task_runs(flow_run_id(failed.stdout)).values()
    assert late.state.type.value == "FAILED" and "past its error threshold" in late.state.message
    spec = project / "flows" / "late.yaml"
    spec.write_text(yaml.safe_dump({**yaml.safe_load(spec.read_text()), "only_fresh_sources": {"on_error": "warn"}}))
    assert _states(_run(project, "late", "-d", DAY)) == {"late_total": "Completed"}
