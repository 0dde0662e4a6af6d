"""The dbt executors side by side: in-process (the reference), the JSON-log executor (the dbt CLI
as a subprocess) and the dbt worker process, chosen by mage_dbt.yaml's `dbt_executor`.

Each executor runs the demo through the real `mage-dbt run`, on DuckDB and on PostgreSQL, twice:
all green, and with a model failing (its downstream skipped by dbt), a test failing and a warn
test. Every block's status, dbt status, rows and message, and every task run's Prefect state,
must equal the in-process executor's; every dbt node runs exactly once (one build per dbt group
in the invocation log, one row in dbt's run_results.json, one task run per block). A dbt worker
killed with SIGKILL in the middle of a node ends the run Failed, with a message saying so, and
the CLI returns instead of hanging. The run-policy cases of test_run_policies (a dbt node past
its timeout on Postgres, a failed node retried alone) hold for the other executors too.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests import test_run_policies as run_policies
from tests.conftest import BIN, cli, copy_project
from tests.support import dbt_changes, postgres
from tests.support.dbt_changes import DEMO, executions, write
from tests.support.runs import flow_run, flow_run_id

EXECUTORS = ("in_process", "json_log", "worker")
FAILING_TEST = "select * from {{ ref('mart_monthly_revenue') }}\n"  # mart_monthly_revenue has rows: fails


@dataclass
class Observed:
    """What one `mage-dbt run` did, normalised for comparison across executors."""

    returncode: int
    output: str
    blocks: dict[str, tuple]
    states: dict[str, tuple]
    task_run_names: list[str]
    run_counts: dict[str, int]
    builds: list[dict]
    run_results_ids: list[list[str]]  # per run_results.json written (one per process: its last build)
    dbt_nodes: int  # the dbt nodes that reached dbt (ephemeral models included)
    dbt_invocations: int
    flow_state: str


def _set_executor(project: Path, executor: str) -> None:
    path = project / "mage_dbt.yaml"
    settings = yaml.safe_load(path.read_text())
    settings["dbt_executor"] = executor
    path.write_text(yaml.safe_dump(settings))


def _normalise(text: str | None, project: Path) -> str | None:
    """A message without what differs between two runs of the same thing: the project's temp
    folder and the dbt target folder's process id."""
    if text is None:
        return None
    text = text.replace(str(project.resolve()), "<project>").replace(str(project), "<project>")
    return re.sub(r"\b(default|duckdb|pg)-\d+\b", r"\1-<pid>", text)


def _task_runs(run_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])), limit=200)


def _run(project: Path, backend: str, pg_env: dict | None) -> Observed:
    env, flags = (None, ()) if backend == "duckdb" else (pg_env, ("--target", "pg"))
    if backend == "pg":
        dbt_changes.reset_pg_schemas(pg_env)
    result = cli(project, "run", "demo", "--execution-date", "2024-02-01", *flags, env=env)
    output = result.stdout + result.stderr
    run_id = flow_run_id(result.stdout)
    summary = json.loads((project / ".mage_dbt" / "runs" / run_id / "summary.json").read_text())
    blocks = {name: (r["status"], r.get("dbt_status"), r.get("rows"), _normalise(r.get("message"), project),
                     r.get("tries"), r.get("batches"), tuple(map(tuple, r.get("failed_batches") or ())))
              for name, r in summary["results"].items()}
    runs = [r for r in _task_runs(run_id) if not r.task_key.startswith("mage-dbt.microbatch-batch.")]
    states = {r.name: (r.state.type.value, r.state.name, _normalise(r.state.message, project)) for r in runs}
    builds = [r for r in executions(project) if r["command"] == "build"]
    # dbt's run_results.json of the run's last build: in the run's own artifacts folder, which a dbt
    # worker process writes to as well (mage_dbt.dbt.manifest.share_artifacts_of)
    folders = [f for f in (project / ".mage_dbt" / "dbt_target" / "demo").glob("*-*") if (f / "run_results.json").exists()]
    assert len(folders) == 1, folders
    ids = [[r["unique_id"] for r in json.loads((folders[0] / "run_results.json").read_text())["results"]]]
    # dbt nodes that reached dbt (a node skipped by the runner before its group ran has no dbt status)
    dbt_nodes = sum(1 for r in summary["results"].values() if r.get("unique_id") and r.get("dbt_status")) \
        + len(summary.get("ephemeral") or {})
    return Observed(result.returncode, output, blocks, states, [r.name for r in runs],
                    {r.name: r.run_count for r in runs}, builds, ids, dbt_nodes,
                    summary["dbt_invocations"], flow_run(run_id).state.type.value)


_OBSERVED: dict[tuple[str, str, str], Observed] = {}


@pytest.fixture
def observe(tmp_path_factory, request):
    """observe(backend, scenario, executor): the demo run with that executor (each run once per session)."""

    def run(backend: str, scenario: str, executor: str) -> Observed:
        key = (backend, scenario, executor)
        if key not in _OBSERVED:
            project = copy_project(tmp_path_factory.mktemp(f"{backend}-{scenario}-{executor}") / "project")
            _set_executor(project, executor)
            if scenario == "failures":
                dbt_changes.add_failing_model(project)
                write(project, f"{DEMO}/tests/fail_on_monthly_revenue.sql", FAILING_TEST)
            pg_env = request.getfixturevalue("pg_env") if backend == "pg" else None
            _OBSERVED[key] = _run(project, backend, pg_env)
        return _OBSERVED[key]

    return run


@pytest.mark.parametrize("backend", ["duckdb", "pg"])
@pytest.mark.parametrize("scenario", ["green", "failures"])
@pytest.mark.parametrize("executor", ["json_log", "worker"])
def test_an_executor_reports_what_the_in_process_executor_reports(observe, backend, scenario, executor):
    reference = observe(backend, scenario, "in_process")
    got = observe(backend, scenario, executor)
    assert got.returncode == reference.returncode == (0 if scenario == "green" else 1), got.output[-3000:]
    if scenario == "failures":  # the reference itself shows each case
        statuses = {name: b[:2] for name, b in reference.blocks.items()}
        assert statuses["fct_broken"] == ("failed", "error")
        assert statuses["broken_downstream"] == ("skipped", "skipped")
        assert statuses["fail_on_monthly_revenue"] == ("failed", "fail")
        assert statuses["warn_on_orders"] == ("success", "warn")
        assert reference.blocks["fail_on_monthly_revenue"][3].startswith("Got ")
    assert reference.blocks["raw_orders"][2] == 740  # rows reach the summary
    assert got.blocks == reference.blocks
    assert got.states == reference.states
    assert got.flow_state == reference.flow_state == ("COMPLETED" if scenario == "green" else "FAILED")


@pytest.mark.parametrize("backend", ["duckdb", "pg"])
@pytest.mark.parametrize("executor", EXECUTORS)
def test_no_dbt_node_runs_twice(observe, backend, executor):
    got = observe(backend, "failures", executor)
    reference = observe(backend, "failures", "in_process")
    # One build per dbt group of the demo (no retry policy here), each counted once by the run.
    assert [b["nodes"] for b in got.builds] == [b["nodes"] for b in reference.builds], got.builds
    assert got.dbt_invocations == len(got.builds)
    assert sum(b["nodes"] for b in got.builds) == got.dbt_nodes  # the groups split the nodes: none in two
    for ids in got.run_results_ids:  # dbt's own record: no node twice in an invocation
        assert [i for i, n in Counter(ids).items() if n > 1] == []
    # One task run per block, none run more than once (no retry policy here).
    assert [n for n, count in Counter(got.task_run_names).items() if count > 1] == []
    assert set(got.task_run_names) == set(got.blocks)
    assert {n: c for n, c in got.run_counts.items() if c > 1} == {}
    if executor == "json_log":
        assert got.builds[0]["executor"] == "json_log" and got.builds[0]["cached_manifest"] is False
    # DuckDB takes one process per file: the worker is not used there, and the run says so.
    fallback = "dbt_executor: worker is not used on DuckDB" in got.output
    assert fallback == (executor == "worker" and backend == "duckdb"), got.output[-3000:]


SLOW_MODEL = "{{ config(materialized='table') }}\nselect 1 as id from (select pg_sleep(90)) as slept\n"


def _children(parent: int, needle: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and needle in cmdline:
            found.append(int(entry.name))
    return found


def test_a_killed_worker_fails_the_run_with_a_clear_message_instead_of_hanging(demo_project, pg_env):
    dbt_changes.reset_pg_schemas(pg_env)
    _set_executor(demo_project, "worker")
    write(demo_project, f"{DEMO}/models/slow/slow_sleep.sql", SLOW_MODEL)
    write(demo_project, "flows/slow.yaml", yaml.safe_dump({"dbt": {"project": "demo", "select": ["slow_sleep"]}}))
    env = {**os.environ, "COLUMNS": "200", **pg_env}
    env.pop("MAGE_DBT_DATA_DIR", None)
    process = subprocess.Popen([str(BIN / "mage-dbt"), "run", "slow", "-d", "2024-02-01", "--target", "pg"],
                               cwd=demo_project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, workers = time.monotonic() + 240, []
        while time.monotonic() < deadline and process.poll() is None:
            sleeping = postgres.query(pg_env, "select count(*) from pg_stat_activity where state = 'active' "
                                      "and query like '%pg_sleep(90)%' and pid <> pg_backend_pid()")[0][0]
            workers = _children(process.pid, "mage_dbt.dbt.worker_process")
            if sleeping and workers:
                break
            time.sleep(0.2)  # polling the database until dbt's query runs (bounded by the deadline)
        assert process.poll() is None and len(workers) == 1, (workers, process.poll())
        os.kill(workers[0], signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=120)  # a hang fails here
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        postgres.end_other_sessions(pg_env)  # the killed worker's pg_sleep(90) would hold its locks for the next test
    message = "dbt worker process exited with signal 9 (SIGKILL) while running build of 1 nodes"
    assert process.returncode == 1, stdout[-3000:] + stderr[-3000:]
    assert message in stdout, stdout[-3000:]
    run = flow_run(flow_run_id(stdout))
    assert run.state.type.value == "FAILED" and message in run.state.message, run.state.message
    task_run, = [r for r in _task_runs(str(run.id)) if r.name == "slow_sleep"]
    assert task_run.state.type.value == "FAILED" and message in task_run.state.message


@pytest.mark.parametrize("setting, env", [("dbt_executor: subprocess\n", {}),
                                          ("", {"MAGE_DBT_DBT_EXECUTOR": "subprocess"})])
def test_an_unknown_executor_is_a_one_line_error(demo_project, setting, env):
    with (demo_project / "mage_dbt.yaml").open("a") as handle:
        handle.write(setting)
    result = cli(demo_project, "run", "demo", "-d", "2024-02-01", env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "dbt_executor" in lines[0], result.stderr
    assert "in_process" in lines[0] and "json_log" in lines[0] and "worker" in lines[0]


@pytest.mark.parametrize("executor", ["json_log", "worker"])
def test_a_dbt_node_past_its_timeout_is_cancelled_with_every_executor(executor, demo_project, pg_env, monkeypatch):
    """test_run_policies' timeout case (Postgres, a 60 s query, timeout 3 s), with this executor:
    the time limit reaches dbt in the other process, the node ends TimedOut, nothing is left running."""
    monkeypatch.setenv("MAGE_DBT_DBT_EXECUTOR", executor)
    run_policies.test_a_dbt_node_past_its_timeout_is_cancelled_on_postgres(demo_project, pg_env)


@pytest.mark.parametrize("executor", ["json_log", "worker"])
def test_a_failed_dbt_node_is_retried_alone_with_every_executor(executor, demo_project, monkeypatch):
    """test_run_policies' retry case: the second invocation runs exactly the failed model and the
    model it held up, never one that succeeded."""
    monkeypatch.setenv("MAGE_DBT_DBT_EXECUTOR", executor)
    run_policies.test_a_dbt_model_that_fails_once_is_retried_alone_in_the_same_flow_run(demo_project)


def test_auto_picks_the_worker_off_duckdb_and_worker_never_runs_on_duckdb(tmp_path, caplog):
    from mage_dbt.dbt.executor_choice import resolve_executor, target_adapter

    assert resolve_executor("auto", "postgres") == "worker"
    assert resolve_executor("auto", "bigquery") == "worker"
    assert resolve_executor("auto", "duckdb") == "in_process"
    assert resolve_executor("auto", None) == "in_process"  # the profile could not be read plainly
    assert resolve_executor("json_log", "duckdb") == "json_log"
    with caplog.at_level("WARNING"):
        assert resolve_executor("worker", "duckdb") == "in_process"
    assert "dbt_executor: worker is not used on DuckDB" in caplog.text

    (tmp_path / "dbt_project.yml").write_text("name: p\nprofile: prof\n")
    (tmp_path / "profiles.yml").write_text(yaml.safe_dump({"prof": {"target": "local", "outputs": {
        "local": {"type": "duckdb", "path": "x.duckdb"},
        "wh": {"type": "postgres", "host": "h"},
        "templated": {"type": "{{ env_var('KIND') }}"}}}}))
    assert target_adapter(tmp_path, tmp_path, None) == "duckdb"
    assert target_adapter(tmp_path, tmp_path, "wh") == "postgres"
    assert target_adapter(tmp_path, tmp_path, "templated") is None
    assert target_adapter(tmp_path, tmp_path, "missing") is None
