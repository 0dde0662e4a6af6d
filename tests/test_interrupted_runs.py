"""Killed and interrupted runs end in a true state (issue 22).

- SIGKILL in the middle of a run: Prefect still says RUNNING, but the run's process lock
  (mage_dbt.runs.run_liveness) is free, so the next `mage-dbt retry` marks it Crashed and re-runs it,
  and the next run (the retry or another) gets the killed run's DuckDB slot back at once (another run
  marks the killed one Crashed too).
- SIGINT (Ctrl-C, to the CLI's process group) in the middle of a Python block, of a dbt build on
  Postgres (a query cancelled by dbt) and of a backfill: exit 130, one `interrupted` line with the
  retry/resume command, the blocks that did not finish Cancelled (none failed), the run Cancelled.

The slow block writes a marker file and waits for a release file: the test sends its signal once
the marker shows the run is mid-way (polling with a deadline, never sleeping on a guess).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from tests.conftest import BIN, cli
from tests.support import dbt_changes, postgres
from tests.support.block_pipelines import states, write_pipeline
from tests.support.deployments import child_env
from tests.support.runs import flow_run, task_runs
from tests.test_backfill_support import wait_for

GATE = '''
import time
from pathlib import Path

if "data_loader" not in globals():
    from mage_dbt import data_loader


@data_loader
def gate(*, execution_date, data_dir, **kwargs):
    day = execution_date.date().isoformat()
    folder = Path(data_dir).parent / "gates"
    folder.mkdir(exist_ok=True)
    (folder / f"started-{day}").write_text("")
    deadline = time.monotonic() + 300
    while not (folder / f"release-{day}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # the workload: a block that takes as long as the test wants
    return day
'''
AFTER = '''
if "transformer" not in globals():
    from mage_dbt import transformer


@transformer
def after_gate(day, **kwargs):
    return day
'''


def _gated_pipeline(project: Path) -> Path:
    write_pipeline(project, "gated", {
        "dbt": {"project": "demo", "select": ["raw_customers"], "command": "build"},
        "blocks": [
            {"name": "gate", "type": "python", "file": "flows/gated/gate.py"},
            {"name": "after_gate", "type": "python", "file": "flows/gated/after_gate.py", "upstream": ["gate"]},
        ],
    }, {"flows/gated/gate.py": GATE, "flows/gated/after_gate.py": AFTER})
    return project / "gates"


def _start(project: Path, *args: str, env: dict | None = None, log: Path) -> subprocess.Popen:
    """The real CLI in its own process group (as a terminal runs it), stdout to `log`, stderr to
    `log` + ".stderr" (a file, never a pipe nobody reads while the run goes on: a run that logs more
    than a pipe holds would block before its gate; two CI runs saw a live run never reach its gate)."""
    err = log.with_name(log.name + ".stderr")
    proc = subprocess.Popen(
        [str(BIN / "mage-dbt"), *args], cwd=project, env=child_env(**(env or {})),
        stdout=log.open("w"), stderr=err.open("w"), text=True, start_new_session=True,
    )
    proc.stderr_log = err  # type: ignore[attr-defined]
    return proc


def _wait_for_gate(proc: subprocess.Popen, gates: Path, day: str, what: str = "the gate block to start") -> None:
    """Wait until the run's gate block for `day` started; on failure say what the run had printed
    (two CI runs saw a live run never reach its gate, with nothing to tell why)."""
    try:
        wait_for(lambda: (gates / f"started-{day}").exists(), what, alive=lambda: proc.poll() is None)
    except AssertionError as exc:
        log = getattr(proc, "stderr_log", None)
        stdout = log.with_name(log.name.removesuffix(".stderr")).read_text()[-3000:] if log else ""
        stderr = log.read_text()[-3000:] if log else ""
        raise AssertionError(f"{exc}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}") from None


def _signal_group(proc: subprocess.Popen, sig: int, timeout: float = 180) -> tuple[int, str]:
    """Send `sig` to the run's process group; its exit code and what it wrote to stderr."""
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, proc.stderr_log.read_text()  # type: ignore[attr-defined]


def _run_dirs(project: Path) -> set[str]:
    runs = project / ".mage_dbt" / "runs"
    return {p.name for p in runs.iterdir()} if runs.is_dir() else set()


def _interrupted_line(stderr: str) -> str:
    """The one `interrupted` line (block log lines may precede it on stderr; nothing follows it)."""
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert [line for line in lines if "interrupted" in line.lower()] == lines[-1:], stderr[-3000:]
    assert lines[-1].startswith("interrupted"), stderr[-3000:]
    return lines[-1]


def test_sigkill_mid_run_then_retry_finds_it_crashed_and_reruns_it(demo_project, tmp_path):
    gates = _gated_pipeline(demo_project)
    proc = _start(demo_project, "run", "gated", "-d", "2024-02-01", log=tmp_path / "killed.log")
    try:
        _wait_for_gate(proc, gates, "2024-02-01")
        [run_id] = _run_dirs(demo_project)
        assert flow_run(run_id).state.type.value == "RUNNING"
    finally:
        _signal_group(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert flow_run(run_id).state.type.value == "RUNNING"  # nobody told Prefect

    (gates / "release-2024-02-01").write_text("")
    retried = cli(demo_project, "retry", "gated")
    assert retried.returncode == 0, retried.stdout[-3000:] + retried.stderr[-3000:]
    assert "marked 1 run(s) whose process is gone Crashed: gated-2024-02-01" in retried.stdout
    # ...and gave back the DuckDB slot the killed run held: the retry did not wait for its lease to end
    assert "waiting for a concurrency slot" not in retried.stdout + retried.stderr, retried.stdout + retried.stderr
    assert f"of flow run {run_id} (gated, execution date 2024-02-01" in retried.stdout
    assert "after_gate" in retried.stdout and "gate" in retried.stdout
    crashed = flow_run(run_id).state
    assert crashed.type.value == "CRASHED"
    assert "is gone (killed or lost power)" in crashed.message
    assert not (demo_project / ".mage_dbt" / "runs" / run_id / "process.lock").exists()

    again = cli(demo_project, "retry", "gated")  # the crashed run was retried: nothing left to offer
    assert again.returncode == 0 and "nothing to retry" in again.stdout, again.stdout[-2000:]


def test_a_run_after_a_sigkilled_run_gets_its_duckdb_slot_back_without_waiting(demo_project, tmp_path):
    """The killed run's lease would hold the DuckDB file's slot for a minute more: the next run sees the
    run's process is gone, releases it and marks the run Crashed (mage_dbt.runs.run_liveness.release_dead)."""
    gates = _gated_pipeline(demo_project)
    proc = _start(demo_project, "run", "gated", "-d", "2024-02-01", log=tmp_path / "killed.log")
    try:
        _wait_for_gate(proc, gates, "2024-02-01")
        [run_id] = _run_dirs(demo_project)
        assert (demo_project / ".mage_dbt" / "runs" / run_id / "leases").read_text().strip()  # written while held
    finally:
        _signal_group(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL

    (gates / "release-2024-02-02").write_text("")
    after = cli(demo_project, "run", "gated", "-d", "2024-02-02")
    out = after.stdout + after.stderr
    assert after.returncode == 0, out[-3000:]
    assert f"gave back the concurrency slots of 1 run(s) whose process is gone (marked Crashed): {run_id}" in out, \
        out[-3000:]
    assert "waiting for a concurrency slot" not in out, out[-3000:]
    assert not (demo_project / ".mage_dbt" / "runs" / run_id / "leases").exists()
    crashed = flow_run(run_id).state  # Prefect no longer shows the killed run RUNNING
    assert crashed.type.value == "CRASHED" and "is gone (killed or lost power)" in crashed.message, crashed
    assert not (demo_project / ".mage_dbt" / "runs" / run_id / "process.lock").exists()
    [new_run] = _run_dirs(demo_project) - {run_id}
    assert not (demo_project / ".mage_dbt" / "runs" / new_run / "leases").exists()  # given back at its end


def test_sigint_mid_python_block_cancels_the_run_exit_130(demo_project, tmp_path):
    gates = _gated_pipeline(demo_project)
    log = tmp_path / "interrupted.log"
    proc = _start(demo_project, "run", "gated", "-d", "2024-02-01", log=log)
    try:
        _wait_for_gate(proc, gates, "2024-02-01")
    finally:
        code, err = _signal_group(proc, signal.SIGINT)
    out = log.read_text()
    assert code == 130, out[-3000:] + err[-3000:]
    [run_id] = _run_dirs(demo_project)
    assert _interrupted_line(err) == f"interrupted — re-run what did not finish with: mage-dbt retry --run {run_id}"
    summary = json.loads((demo_project / ".mage_dbt" / "runs" / run_id / "summary.json").read_text())
    statuses = {n: r["status"] for n, r in summary["results"].items()}
    assert statuses["gate"] == statuses["after_gate"] == "cancelled"
    assert set(statuses.values()) <= {"success", "cancelled"}, statuses
    assert "failed" not in out and "cancelled" in out
    got = states(task_runs(run_id))
    assert got["gate"] == got["after_gate"] == ("CANCELLED", "Cancelled")
    assert flow_run(run_id).state.type.value == "CANCELLED"
    assert not (demo_project / ".mage_dbt" / "runs" / run_id / "process.lock").exists()

    (gates / "release-2024-02-01").write_text("")
    retried = cli(demo_project, "retry", "gated")  # the cancelled run is offered
    assert retried.returncode == 0, retried.stdout[-3000:] + retried.stderr[-3000:]
    assert f"of flow run {run_id}" in retried.stdout


SLEEPER = "select 1 as id from (select pg_sleep(300)) as slow\n"


def _sleeping(env) -> list[tuple]:
    return postgres.query(env, "select pid from pg_stat_activity where datname = current_database() "
                               "and pid <> pg_backend_pid() and query ilike '%pg_sleep(300)%' and state = 'active'")


def test_sigint_mid_dbt_build_on_postgres_cancels_the_query_and_the_run(demo_project, pg_env, tmp_path):
    dbt_changes.reset_pg_schemas(pg_env)
    model = demo_project / "dbt_projects" / "demo" / "models" / "marts" / "slow_sleeper.sql"
    model.write_text(SLEEPER)
    log = tmp_path / "interrupted.log"
    proc = _start(demo_project, "run", "demo", "-d", "2024-02-01", "--target", "pg", env=pg_env, log=log)
    try:
        wait_for(lambda: _sleeping(pg_env), "dbt to run the sleeping model", alive=lambda: proc.poll() is None)
    finally:
        code, err = _signal_group(proc, signal.SIGINT)
    out = log.read_text()
    assert code == 130, out[-3000:] + err[-3000:]
    [run_id] = _run_dirs(demo_project)
    assert _interrupted_line(err).endswith(f"mage-dbt retry --run {run_id}")
    assert not _sleeping(pg_env)  # dbt cancelled the query
    summary = json.loads((demo_project / ".mage_dbt" / "runs" / run_id / "summary.json").read_text())
    statuses = {n: r["status"] for n, r in summary["results"].items()}
    assert statuses["slow_sleeper"] == "cancelled"
    assert statuses["export_report"] == "cancelled"  # never reached
    assert "failed" not in statuses.values(), statuses
    assert "KeyboardInterrupt" not in out and "Database Error" not in out
    got = states(task_runs(run_id))
    assert got["slow_sleeper"] == ("CANCELLED", "Cancelled")
    assert {s for s, _ in got.values()} <= {"COMPLETED", "CANCELLED"}, got
    assert flow_run(run_id).state.type.value == "CANCELLED"

    model.write_text("select 1 as id\n")
    retried = cli(demo_project, "retry", "demo", env=pg_env)
    assert retried.returncode == 0, retried.stdout[-3000:] + retried.stderr[-3000:]
    assert f"of flow run {run_id}" in retried.stdout


def test_sigint_mid_backfill_cancels_it_exit_130_and_resume_finishes(demo_project, tmp_path):
    gates = _gated_pipeline(demo_project)
    gates.mkdir(exist_ok=True)
    (gates / "release-2024-02-01").write_text("")
    log = tmp_path / "backfill.log"
    proc = _start(demo_project, "backfill", "gated", "--start", "2024-02-01", "--end", "2024-02-03", log=log)
    try:
        _wait_for_gate(proc, gates, "2024-02-02", "the second interval's gate to start")
    finally:
        code, err = _signal_group(proc, signal.SIGINT)
    out = log.read_text()
    assert code == 130, out[-3000:] + err[-3000:]
    line = _interrupted_line(err)
    assert line.startswith("interrupted — resume with: mage-dbt backfill --resume ")
    backfill_id = line.rsplit(" ", 1)[1]
    assert "cancelled 2024-02-02" in out and "block(s) failed" not in out and "1 failed" not in out, out[-3000:]
    from tests.test_backfill_support import flow_runs, runs_by_name

    assert runs_by_name(backfill_id) == {"gated-2024-02-01": ["COMPLETED"], "gated-2024-02-02": ["CANCELLED"]}
    assert [p.state.type.value for p in flow_runs(backfill_id, "mage-dbt-backfill")] == ["CANCELLED"]
    listing = cli(demo_project, "backfills", backfill_id)
    assert "cancelled" in listing.stdout and "not started" in listing.stdout, listing.stdout[-2000:]

    for day in ("2024-02-02", "2024-02-03"):
        (gates / f"release-{day}").write_text("")
    resumed = cli(demo_project, "backfill", "--resume", backfill_id)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
