"""Backfills on Postgres: SIGKILL in the middle of an interval, resume, and the incremental tables equal
those of an uninterrupted backfill (ordered row checksums, no duplicate keys); --concurrency 2 runs
intervals in separate worker processes that share the parsed manifest."""

from __future__ import annotations

import os
import signal
import subprocess

import psycopg2

from tests.conftest import BIN, cli, copy_project
from tests.support import demo_data, postgres
from tests.test_backfill_support import (
    INCREMENTAL_KEYS,
    backfill_ids,
    duplicate_keys,
    flow_runs,
    invocations,
    ordered_checksum,
    parses_per_process,
    reset_pg,
    runs_by_name,
    wait_for,
    write_test_pipelines,
)

START, END = "2024-01-01", "2024-01-07"
KILL_DAY = "2024-01-04"  # loaded once by a daily run before the backfill; the backfill re-processes it
PG = ["--target", "pg"]


def _prepare(project, env) -> None:
    """Seeds and staging, then one daily run of KILL_DAY: the same starting state in both databases."""
    reset_pg(env)
    for args in (["run", "base", "-d", START], ["run", "daily", "-d", KILL_DAY]):
        result = cli(project, *args, *PG, env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _blocked_on_our_lock(env) -> list[tuple]:
    """Sessions of the backfill waiting for the row lock the test holds on KILL_DAY's rows."""
    return postgres.query(env, (
        "select pid, query from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid() "
        "and wait_event_type = 'Lock' and query ilike '%customer_ltv_daily%'"
    ))


def test_sigkill_mid_interval_then_resume_equals_uninterrupted_backfill(demo_project, pg_env, tmp_path):
    project = demo_project
    reference = copy_project(tmp_path / "reference")
    write_test_pipelines(project)
    write_test_pipelines(reference)
    with postgres.temporary_database(f"mage_dbt_bfref_{os.getpid()}") as ref_env:
        _prepare(project, pg_env)
        _prepare(reference, ref_env)

        uninterrupted = cli(reference, "backfill", "daily", "--start", START, "--end", END, *PG, env=ref_env)
        assert uninterrupted.returncode == 0, uninterrupted.stdout[-3000:] + uninterrupted.stderr[-3000:]

        # Hold a row lock on KILL_DAY's rows: the backfill's delete+insert of that day must wait for it,
        # so the kill lands deterministically inside interval 4 (fct_orders may have committed already).
        holder = psycopg2.connect(host=pg_env["PGHOST"], user=pg_env["PGUSER"], dbname=pg_env["PGDATABASE"])
        with holder.cursor() as cur:
            cur.execute("select * from analytics.customer_ltv_daily where as_of_date = %s for update", (KILL_DAY,))
        log = open(tmp_path / "killed.log", "w")
        proc = subprocess.Popen(
            [str(BIN / "mage-dbt"), "backfill", "daily", "--start", START, "--end", END, *PG],
            cwd=project, env={**os.environ, "COLUMNS": "200", **pg_env}, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            waiting = wait_for(lambda: _blocked_on_our_lock(pg_env), "the backfill to reach the locked day",
                               alive=lambda: proc.poll() is None)
            assert "delete" in waiting[0][1].lower()
            [backfill_id] = backfill_ids(project)
            assert runs_by_name(backfill_id) == {
                "daily-2024-01-01": ["COMPLETED"], "daily-2024-01-02": ["COMPLETED"],
                "daily-2024-01-03": ["COMPLETED"], "daily-2024-01-04": ["RUNNING"],
            }
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
            holder.rollback()
            holder.close()
            log.close()
        # the orphaned server session ends (its transaction rolls back) once the lock is gone
        wait_for(lambda: not _blocked_on_our_lock(pg_env), "the killed backfill's session to end")

        # Prefect still shows the interval RUNNING: only the lock says its process is gone
        assert runs_by_name(backfill_id)["daily-2024-01-04"] == ["RUNNING"]
        listing = cli(project, "backfills", backfill_id)
        assert listing.returncode == 0 and "running" in listing.stdout, listing.stderr[-2000:]

        before = len(invocations(project))
        resumed = cli(project, "backfill", "--resume", backfill_id, env=pg_env)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert "3 of 7 intervals already completed" in resumed.stdout
        runs_after = [r for r in invocations(project)[before:] if r["command"] in ("run", "build")]
        assert len(runs_after) == 4  # 2024-01-04 .. 2024-01-07, nothing completed is re-run
        assert max(parses_per_process(invocations(project)).values(), default=0) <= 1

        assert runs_by_name(backfill_id) == {
            "daily-2024-01-01": ["COMPLETED"], "daily-2024-01-02": ["COMPLETED"], "daily-2024-01-03": ["COMPLETED"],
            "daily-2024-01-04": ["CRASHED", "COMPLETED"], "daily-2024-01-05": ["COMPLETED"],
            "daily-2024-01-06": ["COMPLETED"], "daily-2024-01-07": ["COMPLETED"],
        }
        parents = flow_runs(backfill_id, "mage-dbt-backfill")
        assert [p.state.type.value for p in parents] == ["CRASHED", "COMPLETED"]

        for table in INCREMENTAL_KEYS:
            assert duplicate_keys(pg_env, table) == [], table
            count, digest = ordered_checksum(pg_env, table)
            assert count > 0
            assert (count, digest) == ordered_checksum(ref_env, table), table


def test_concurrency_runs_intervals_in_worker_processes(demo_project, pg_env):
    project = demo_project
    write_test_pipelines(project)
    reset_pg(pg_env)
    setup = cli(project, "run", "base", "-d", START, *PG, env=pg_env)
    assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
    before = len(invocations(project))

    days = [f"2024-01-0{d}" for d in range(1, 7)]
    result = cli(project, "backfill", "daily", "--start", days[0], "--end", days[-1], "--concurrency", "2",
                 "--select", "fct_daily_revenue", "--select", "customer_ltv_daily", "--full-refresh-first",
                 *PG, env=pg_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [backfill_id] = backfill_ids(project)

    # every interval ran once, as a subflow of the one backfill flow run
    assert runs_by_name(backfill_id) == {f"daily-{d}": ["COMPLETED"] for d in days}
    [parent] = flow_runs(backfill_id, "mage-dbt-backfill")
    assert parent.state.type.value == "COMPLETED" and parent.parameters["concurrency"] == 2
    children = flow_runs(backfill_id)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        owners = {client.read_task_run(c.parent_task_run_id).flow_run_id for c in children}
    assert owners == {parent.id}
    full_refresh = {c.name: c.parameters["full_refresh"] for c in children}
    assert full_refresh == {f"daily-{d}": d == days[0] for d in days}  # only the first interval rebuilt

    # the first interval ran in the backfill process, the other five in two worker processes, none parsed
    records = [r for r in invocations(project)[before:]]
    runs = [r for r in records if r["command"] in ("run", "build")]
    assert len(runs) == len(days) and all(r["success"] and r["cached_manifest"] for r in runs), records
    pids = {r["pid"] for r in runs}
    assert len(pids) == 3, runs
    parsed_in = {r["pid"] for r in records if r["command"] == "parse"}
    assert parsed_in <= {runs[0]["pid"]}  # only the backfill process itself may have parsed

    revenue = postgres.query(pg_env, "select revenue_date::text from analytics.fct_daily_revenue order by 1")
    assert [r[0] for r in revenue] == days
    ltv = postgres.query(pg_env, "select count(*) from analytics.customer_ltv_daily")[0][0]
    assert ltv == demo_data.expected_ltv_rows(days)
    assert duplicate_keys(pg_env, "customer_ltv_daily") == []
