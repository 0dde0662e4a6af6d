"""Backfills through a Prefect work pool (`mage-dbt backfill --work-pool`): ten daily intervals are runs of the
pipeline's deployment, taken by two real `prefect worker` processes, never more than N at once; a
worker SIGKILLed mid-interval leaves its run Crashed (the server's heartbeat automation) and a resume
completes the rest; the tables equal those of a single-process backfill. Plus the refusals.

The SIGKILL path uses a private Prefect server: its missing-heartbeat window is made short (60 s),
which the session's shared server must not get.
"""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from datetime import datetime

import yaml

from tests.conftest import BIN, cli, copy_project
from tests.support.deployments import Background, child_env, unique
from tests.test_backfill_support import (
    backfill_ids, duplicate_keys, flow_runs, ordered_checksum, reset_pg, wait_for,
    write_test_pipelines,
)
from tests.test_interrupted_runs import GATE, _start

# The gate block, writing the pid of the flow run's process into its started-<day> file.
PID_GATE = GATE.replace('(folder / f"started-{day}").write_text("")',
                        '(folder / f"started-{day}").write_text(str(__import__("os").getpid()))')
assert PID_GATE != GATE

START, END, GATED_DAY = "2024-01-01", "2024-01-10", "2024-01-03"  # ten days (issue 20): both workers, N at once
PG = ["--target", "pg"]
N = 2


# The intervals run two at a time, so only models whose intervals are independent: fct_orders merges each
# day's status changes on order_id (the later day must win), which concurrent intervals cannot promise;
# the backfill warns about it (safety.order_dependent_models) and a depends_on_past pipeline runs it.
INDEPENDENT = ("fct_daily_revenue", "customer_ltv_daily")


def _write_pool_pipeline(project, name: str, **extra) -> None:
    """The day-independent incremental models and a gate block that waits on GATED_DAY until released."""
    spec = {"description": "work pool backfill test", "dbt": {"project": "demo", "select": list(INDEPENDENT),
                                                               "command": "run"},
            "blocks": [{"name": "gate", "type": "python", "file": f"flows/{name}/gate.py"}], **extra}
    (project / "flows" / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (project / "flows" / name).mkdir(exist_ok=True)
    (project / "flows" / name / "gate.py").write_text(PID_GATE)


def _release(project, *days: str) -> None:
    gates = project / "gates"
    gates.mkdir(exist_ok=True)
    for day in days:
        (gates / f"release-{day}").write_text("")


def _days() -> list[str]:
    """Every day of START..END."""
    first, last = (datetime.fromisoformat(d).toordinal() for d in (START, END))
    return [datetime.fromordinal(day).date().isoformat() for day in range(first, last + 1)]


def _day(run) -> str:
    return str(run.parameters.get("execution_date", ""))[:10]


def _submitted_by(api: str) -> dict[str, str]:
    """flow run id -> the name of the worker that took it, from the workers' own Prefect events."""
    body = json.dumps({"filter": {"event": {"name": ["prefect.worker.submitted-flow-run"]}}, "limit": 50}).encode()
    request = urllib.request.Request(f"{api}/events/filter", data=body, headers={"Content-Type": "application/json"})
    events = []
    while request is not None:
        with urllib.request.urlopen(request, timeout=30) as response:
            page = json.load(response)
        events += page["events"]
        request = urllib.request.Request(page["next_page"]) if page.get("next_page") else None
    out = {}
    for event in events:
        for related in event.get("related", []):
            if related.get("prefect.resource.role") == "flow-run":
                out[related["prefect.resource.id"].removeprefix("prefect.flow-run.")] = event["resource"][
                    "prefect.resource.name"]
    return out


def _workers_of(api: str, runs) -> dict[str, str]:
    """flow run id -> worker name for every run in `runs` that a worker took (events arrive shortly after)."""
    wanted = {str(r.id) for r in runs if r.start_time is not None}
    seen = wait_for(lambda: (got := _submitted_by(api)) and wanted <= set(got) and got, "the workers' events")
    return {run_id: seen[run_id] for run_id in wanted}


def _max_overlap(runs) -> int:
    """The most interval runs that were running at the same moment (from their start and end times)."""
    edges = []
    for run in runs:
        if run.start_time is not None:
            edges.append((run.start_time, 1))
            edges.append((run.end_time or datetime.max.replace(tzinfo=run.start_time.tzinfo), -1))
    most = now = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        now += step
        most = max(most, now)
    return most


def test_intervals_run_on_two_workers_at_most_n_at_once_and_resume_after_a_sigkilled_worker(
        demo_project, pg_env, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from mage_dbt.deploy.zombie_runs import ensure_zombie_automation
    from tests.support import prefect_server

    project = demo_project
    write_test_pipelines(project)
    _write_pool_pipeline(project, "poolfill")
    _release(project, *[d for d in _days() if d != GATED_DAY])
    reset_pg(pg_env)
    server = prefect_server.start(tmp_path / "prefect_home")
    workers: dict[str, Background] = {}
    try:
        api = f"{server.url}/api"
        with temporary_settings(updates={PREFECT_API_URL: api}):  # this test's own server
            env = {**pg_env, **server.env, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
            base = cli(project, "run", "base", "-d", START, *PG, env=env)
            assert base.returncode == 0, base.stdout[-3000:] + base.stderr[-3000:]
            pool = unique("backfill_pool")
            with get_client(sync_client=True) as client:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            deployed = cli(project, "deploy", "poolfill", "--work-pool", pool, env=env)
            assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
            assert ensure_zombie_automation(frequency=20) in ("created", "updated")  # a 60 s window
            for name in ("worker-a", "worker-b"):
                workers[name] = Background(
                    [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", name,
                     "--limit", "1"],
                    cwd=tmp_path, env=child_env(**env, PREFECT_WORKER_QUERY_SECONDS="1"), log=tmp_path / f"{name}.log")

            backfill = _start(project, "backfill", "poolfill", "--start", START, "--end", END, *PG, "--work-pool", pool,
                              "-j", str(N), env=env, log=tmp_path / "backfill.log")
            try:
                started = project / "gates" / f"started-{GATED_DAY}"
                wait_for(started.exists, "the gated interval to start on a worker", timeout=400,
                         alive=lambda: backfill.poll() is None)
                [backfill_id] = backfill_ids(project)
                gated = wait_for(lambda: [r for r in flow_runs(backfill_id) if _day(r) == GATED_DAY], "the gated run")[0]
                victim = wait_for(lambda: _submitted_by(api).get(str(gated.id)), "the worker event of the gated run")
                # The worker's machine dies: the worker and the flow run process it started (its own session).
                os.killpg(os.getpgid(int(started.read_text())), signal.SIGKILL)
                os.killpg(workers[victim].process.pid, signal.SIGKILL)
                workers[victim].process.wait(timeout=30)
                _, err = backfill.communicate(timeout=600)
            finally:
                if backfill.poll() is None:
                    os.killpg(backfill.pid, signal.SIGKILL)
                    backfill.wait()
            assert backfill.returncode == 1, (tmp_path / "backfill.log").read_text()[-3000:] + err[-3000:]
            runs = flow_runs(backfill_id)
            by_day = {_day(r): r for r in runs}
            assert by_day[GATED_DAY].state.type.value == "CRASHED", by_day[GATED_DAY].state
            ran_on = _workers_of(api, runs)
            assert set(ran_on.values()) == {"worker-a", "worker-b"}, ran_on  # both workers took intervals
            assert _max_overlap(runs) <= N
            # Every interval run held a slot of the backfill's own Prefect limit (its tag names it).
            with get_client(sync_client=True) as client:
                limit = client.read_global_concurrency_limit_by_name(f"mage-dbt-backfill:{backfill_id}")
            assert limit.limit == N
            assert all(f"mage-dbt-slot:mage-dbt-backfill:{backfill_id}={N}" in r.tags for r in runs)

            _release(project, GATED_DAY)
            resumed = cli(project, "backfill", "--resume", backfill_id, env=env, timeout=600)
            assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
            runs = flow_runs(backfill_id)
            done = {_day(r) for r in runs if r.state.type.value == "COMPLETED"}
            assert done == set(_days())
            assert _max_overlap(runs) <= N
            survivor = ({"worker-a", "worker-b"} - {victim}).pop()
            assert set(_workers_of(api, runs).values()) == {"worker-a", "worker-b"}
            assert {w for r, w in _workers_of(api, runs).items() if r not in ran_on} == {survivor}
            pooled = {table: ordered_checksum(pg_env, table) for table in INDEPENDENT}
            assert all(duplicate_keys(pg_env, table) == [] for table in INDEPENDENT)
            assert all(rows > 0 for rows, _ in pooled.values()), pooled

            # The reference: the same backfill in one process, from the same starting tables.
            import psycopg2

            with psycopg2.connect(host=pg_env["PGHOST"], user=pg_env["PGUSER"], dbname=pg_env["PGDATABASE"]) as conn:
                conn.autocommit = True
                with conn.cursor() as cur:
                    for table in INDEPENDENT:
                        cur.execute(f"drop table analytics.{table}")
            local = cli(project, "backfill", "poolfill", "--start", START, "--end", END, *PG, env=env, timeout=600)
            assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
            assert {table: ordered_checksum(pg_env, table) for table in INDEPENDENT} == pooled
    finally:
        for worker in workers.values():
            worker.stop()
        server.stop()


def _error_line(result) -> str:
    return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""


def test_a_duckdb_target_is_refused_with_the_reason_before_anything_starts(demo_project):
    result = cli(demo_project, "backfill", "demo", "--start", START, "--end", "2024-01-02", "--work-pool", "anypool")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert ("--work-pool runs intervals in worker processes, possibly on other machines; target 'default' is DuckDB"
            in _error_line(result)), result.stderr
    assert backfill_ids(demo_project) == []  # nothing recorded


def test_a_pipeline_without_a_deployment_in_the_pool_is_refused_naming_the_deploy_command(demo_project, pg_env):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    write_test_pipelines(demo_project)
    pool = unique("empty_pool")
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    result = cli(demo_project, "backfill", "daily", "--start", START, "--end", "2024-01-02", *PG,
                 "--work-pool", pool, env=pg_env)
    assert result.returncode == 2, result.stdout + result.stderr
    line = _error_line(result)
    assert "pipeline 'daily' has no Prefect deployment to submit intervals to" in line, result.stderr
    assert f"mage-dbt deploy daily --work-pool {pool}" in line
    assert backfill_ids(demo_project) == []

    missing = cli(demo_project, "backfill", "daily", "--start", START, "--end", "2024-01-02", *PG,
                  "--work-pool", "no_such_pool_here", env=pg_env)
    assert missing.returncode == 2 and "work pool 'no_such_pool_here' does not exist" in _error_line(missing)


def test_depends_on_past_refuses_concurrency(demo_project, pg_env):
    _write_pool_pipeline(demo_project, "ordered", depends_on_past=True)
    result = cli(demo_project, "backfill", "ordered", "--start", START, "--end", "2024-01-02", *PG, "-j", "2",
                 env=pg_env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "declares depends_on_past: true" in _error_line(result) and "drop --concurrency" in _error_line(result)
    assert backfill_ids(demo_project) == []


def test_a_second_backfill_overlapping_a_running_one_of_the_same_pipeline_is_refused(demo_project):
    """Running here (its lock held) or elsewhere (its backfill flow run running on the server)."""
    import fcntl

    from prefect import flow, tags

    from mage_dbt.backfill.state import BACKFILL_FLOW_NAME

    first = cli(demo_project, "backfill", "demo", "--start", "2024-02-01", "--end", "2024-02-02")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    [backfill_id] = backfill_ids(demo_project)
    fd = os.open(demo_project / ".mage_dbt" / "backfills" / f"{backfill_id}.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what the process of a running backfill holds
    try:
        refused = cli(demo_project, "backfill", "demo", "--start", "2024-02-02", "--end", "2024-02-03")
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert (f"backfill {backfill_id} (2024-02-01..2024-02-02) is running right now and writes pipeline 'demo'"
                in _error_line(refused))
        assert backfill_ids(demo_project) == [backfill_id]  # nothing recorded
    finally:
        os.close(fd)

    # Started on another machine: only its backfill flow run, running on the server, tells.
    elsewhere = f"demo-elsewhere-{unique('x')}"
    seen = {}

    @flow(name=BACKFILL_FLOW_NAME)
    def other_backfill(pipeline: str, start: str, end: str):
        seen["refused"] = cli(demo_project, "backfill", "demo", "--start", "2024-01-31", "--end", "2024-02-01")
        seen["apart"] = cli(demo_project, "backfill", "demo", "--start", "2024-02-05", "--end", "2024-02-05")

    from mage_dbt.backfill.state import project_tag

    with tags(f"backfill:{elsewhere}", project_tag(demo_project)):
        other_backfill("demo", "2024-01-25", "2024-02-01")
    assert seen["refused"].returncode == 2, seen["refused"].stdout + seen["refused"].stderr
    assert (f"backfill {elsewhere} (2024-01-25..2024-02-01) of pipeline 'demo' is running right now (on the Prefect "
            "server)" in _error_line(seen["refused"]))
    assert seen["apart"].returncode == 0, seen["apart"].stdout[-3000:] + seen["apart"].stderr[-3000:]

    # A pipeline of the same name in another project (another folder) sharing the server is no overlap.
    @flow(name=BACKFILL_FLOW_NAME)
    def other_projects_backfill(pipeline: str, start: str, end: str):
        seen["other"] = cli(demo_project, "backfill", "demo", "--start", "2024-01-20", "--end", "2024-01-20")

    with tags(f"backfill:{elsewhere}-2", "mage-dbt-project:another-project"):
        other_projects_backfill("demo", "2024-01-15", "2024-01-25")
    assert seen["other"].returncode == 0, seen["other"].stdout[-3000:] + seen["other"].stderr[-3000:]


STAMP_BLOCK = '''
if "data_loader" not in globals():
    from mage_dbt import data_loader


@data_loader
def stamp(*, execution_date, **kwargs):
    if execution_date.date().isoformat() == "2024-03-02":
        raise ValueError("no data for 2024-03-02")
    return execution_date.date().isoformat()
'''


def test_depends_on_past_runs_pool_intervals_in_date_order_and_stops_at_a_failure_even_with_keep_going(
        demo_project, tmp_path):
    """Each interval is submitted after its predecessor ended; after a failed one, the next never is."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    name = "ordered_pool"
    spec = {"description": "python only, each day builds on the previous one", "depends_on_past": True,
            "blocks": [{"name": "stamp", "type": "python", "file": f"flows/{name}/stamp.py"}]}
    (demo_project / "flows" / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (demo_project / "flows" / name).mkdir()
    (demo_project / "flows" / name / "stamp.py").write_text(STAMP_BLOCK)
    pool = unique("ordered_pool")
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deployed = cli(demo_project, "deploy", name, "--work-pool", pool)
    assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
    workers = [Background([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
                           "--name", f"{pool}-{n}"], cwd=tmp_path, env=child_env(PREFECT_WORKER_QUERY_SECONDS="1"),
                          log=tmp_path / f"worker-{n}.log") for n in (1, 2)]
    try:
        result = cli(demo_project, "backfill", name, "--start", "2024-03-01", "--end", "2024-03-04",
                     "--work-pool", pool, "--keep-going", timeout=600)
        assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    finally:
        for worker in workers:
            worker.stop()
    [backfill_id] = backfill_ids(demo_project)
    runs = sorted(flow_runs(backfill_id), key=lambda r: r.start_time)
    assert [(_day(r), r.state.type.value) for r in runs] == [("2024-03-01", "COMPLETED"), ("2024-03-02", "FAILED")], (
        result.stdout[-3000:] + result.stderr[-3000:])
    assert "2 not started" in result.stdout
    assert all(earlier.end_time <= later.start_time for earlier, later in zip(runs, runs[1:]))  # never two at once
