"""Concurrency limits (issue 16, item 2) on a real Prefect server: `concurrency: {limit: 1}` keeps two
CLI runs of a pipeline from overlapping (task run times from the API), the waiting run says so in its
log and state message, `max_wait_seconds` bounds the wait with one line, a DuckDB file takes one
writer, and two pipelines giving one concurrency name two limits are refused at deploy with file:line.

Runs are held open by a gate file the test creates: no sleeps as synchronization, only polling with
a deadline."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from pathlib import Path

from tests.conftest import BIN
from tests.support.block_pipelines import one_line_error, write_pipeline
from tests.support.deployments import child_env, unique, wait_until
from tests.support.runs import flow_run_id, task_runs

GATED = """
    import os
    import time
    from pathlib import Path

    from mage_dbt import data_loader


    @data_loader
    def hold(*, execution_date):
        gate = Path(os.environ["GATE_DIR"])
        (gate / f"started-{execution_date.date()}").touch()
        deadline = time.monotonic() + 180
        while not ((gate / "release").exists() or (gate / f"release-{execution_date.date()}").exists()):
            if time.monotonic() > deadline:
                raise RuntimeError("the test never opened the gate")
            time.sleep(0.05)
        return {"date": str(execution_date.date())}
    """


def _gated_pipeline(project: Path, name: str, concurrency: dict | None, writes: list[str] | None = None) -> None:
    block = {"name": "hold", "type": "python", "file": "flows/gated/hold.py", **({"writes": writes} if writes else {})}
    spec = {"description": "holds until the test opens the gate", "blocks": [block]}
    if concurrency is not None:
        spec["concurrency"] = concurrency
    write_pipeline(project, name, spec, {"flows/gated/hold.py": GATED})


def _start(project: Path, gate: Path, name: str, date: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "mage-dbt"), "run", name, "--execution-date", date], cwd=project,
        env=child_env(GATE_DIR=str(gate)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _started(gate: Path, date: str, process: subprocess.Popen):
    """A predicate: the block of the run for `date` started (fails at once if its CLI exited)."""
    def check():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the run exited with {process.returncode}:\n{out[-2000:]}\n{err[-2000:]}")
        return (gate / f"started-{date}").exists()
    return check


def _finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def _flow_run_named(name: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    return runs[0] if runs else None


def _logs(flow_run) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run])), limit=200)
    return [log.message for log in logs]


def test_two_runs_under_limit_one_never_overlap_and_the_second_says_it_waits(demo_project, tmp_path):
    name = unique("single")
    _gated_pipeline(demo_project, name, {"limit": 1})
    gate = tmp_path / "gate"
    gate.mkdir()
    first = _start(demo_project, gate, name, "2024-03-01")
    second = None
    try:
        wait_until(_started(gate, "2024-03-01", first), 120, "the first run's block to start")
        second = _start(demo_project, gate, name, "2024-03-02")
        waiting = wait_until(lambda: _flow_run_named(f"{name}-2024-03-02"), 120, "the second flow run")
        # While the first run holds the slot, the second says so in its state message and its log.
        wait_until(lambda: "waiting for a concurrency slot" in (_flow_run_named(waiting.name).state.message or ""),
                   120, "the waiting run's state message")
        assert not (gate / "started-2024-03-02").exists()  # its block has not started
    finally:
        (gate / "release").touch()
        results = [_finish(p) for p in (first, second) if p is not None]
    for code, out, err in results:
        assert code == 0, out[-2000:] + err[-2000:]
    one, two = (task_runs(flow_run_id(out))["hold"] for _, out, _ in results)
    assert one.end_time <= two.start_time, (one.start_time, one.end_time, two.start_time, two.end_time)
    logs = _logs(flow_run_id(results[1][1]))  # the run's log lines reach the API in batches
    assert any(f"waiting for a concurrency slot: pipeline '{name}' (1/1 in use)" in m for m in logs), logs
    assert not [m for m in _logs(flow_run_id(results[0][1])) if "waiting for a concurrency slot" in m]
    _, out, err = results[1]  # the wait is a warning, not Prefect's ERROR about the first try's timeout
    assert "ERROR" not in out + err and "failed to process item" not in out + err, out[-2000:] + err[-2000:]

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # created by the CLI on first use, and free again
        limit = client.read_global_concurrency_limit_by_name(f"mage-dbt-pipeline:{name}")
    assert (limit.limit, limit.active_slots) == (1, 0)


def test_a_wait_longer_than_max_wait_seconds_fails_with_one_line(demo_project, tmp_path):
    name = unique("bounded")
    _gated_pipeline(demo_project, name, {"limit": 1, "max_wait_seconds": 1})
    gate = tmp_path / "gate"
    gate.mkdir()
    first = _start(demo_project, gate, name, "2024-03-01")
    try:
        wait_until(_started(gate, "2024-03-01", first), 120, "the first run's block to start")
        code, out, err = _finish(_start(demo_project, gate, name, "2024-03-02"))
    finally:
        (gate / "release").touch()
        first_code, first_out, first_err = _finish(first)
    assert first_code == 0, first_out[-2000:] + first_err[-2000:]
    assert code != 0 and "Traceback" not in out + err, out[-2000:] + err[-2000:]
    assert "gave up after waiting 1 s for a concurrency slot (max_wait_seconds: 1)" in out + err, out + err
    assert not (gate / "started-2024-03-02").exists()
    failed = _flow_run_named(f"{name}-2024-03-02")
    assert failed.state.type.value == "FAILED" and "max_wait_seconds: 1" in failed.state.message
    assert task_runs(str(failed.id)) == {}


def test_runs_writing_one_duckdb_file_take_turns_without_any_setting(demo_project, tmp_path):
    """Two different pipelines without `concurrency:` whose blocks write to the demo's DuckDB file."""
    one, two = unique("duck_a"), unique("duck_b")
    for name in (one, two):
        _gated_pipeline(demo_project, name, None, writes=[f"main.{name}"])
    gate = tmp_path / "gate"
    gate.mkdir()
    first = _start(demo_project, gate, one, "2024-03-01")
    second = None
    try:
        wait_until(_started(gate, "2024-03-01", first), 120, "the first run's block to start")
        second = _start(demo_project, gate, two, "2024-03-02")
        wait_until(lambda: "waiting for a concurrency slot" in (
            getattr(getattr(_flow_run_named(f"{two}-2024-03-02"), "state", None), "message", None) or ""),
            120, "the second run to wait for the DuckDB file's slot")
        message = _flow_run_named(f"{two}-2024-03-02").state.message
        assert "DuckDB file " in message and "demo.duckdb (1/1 in use)" in message, message
        assert not (gate / "started-2024-03-02").exists()
    finally:
        (gate / "release").touch()
        results = [_finish(p) for p in (first, second) if p is not None]
    for code, out, err in results:
        assert code == 0, out[-2000:] + err[-2000:]
    a, b = (task_runs(flow_run_id(out))["hold"] for _, out, _ in results)
    assert a.end_time <= b.start_time


def test_named_target_limit_comes_from_mage_dbt_yaml(demo_project):
    from mage_dbt.runs.concurrency import target_slots
    from mage_dbt.settings import load_settings
    from mage_dbt.warehouse import resolve_target

    (demo_project / "mage_dbt.yaml").write_text(
        (demo_project / "mage_dbt.yaml").read_text() + "target_concurrency: {duckdb: 3}\n")
    settings = load_settings(demo_project)
    target = resolve_target(settings.profiles_dir, "mage_dbt_demo", "duckdb")
    slots = {s.name: s.limit for s in target_slots(settings, target)}
    assert slots.pop("mage-dbt-target:duckdb") == 3
    assert [limit for name, limit in slots.items() if name.startswith("mage-dbt-duckdb:demo.duckdb-")] == [1]


def test_one_concurrency_name_with_two_limits_is_refused_at_deploy(demo_project, run_cli):
    one, two = unique("shared_a"), unique("shared_b")
    _gated_pipeline(demo_project, one, {"limit": 1, "name": "nightly"})
    _gated_pipeline(demo_project, two, {"limit": 2, "name": "nightly"})
    line = one_line_error(run_cli(demo_project, "deploy", one))
    lines = (demo_project / "flows" / f"{two}.yaml").read_text().splitlines()
    at = next(i for i, text in enumerate(lines, 1) if text.strip() == "limit: 2")
    assert f"flows/{two}.yaml:{at}: concurrency limit 'nightly' is 2 here but 1 in pipeline '{one}'" in line, line
    from tests.support.deployments import deployment

    assert deployment(one) is None and deployment(two) is None


@pytest.mark.parametrize("key, value, says", [
    ("concurrency", {"limit": 1, "limt": 2}, "'concurrency.limt': Extra inputs are not permitted"),
    ("concurrency", {"limit": 0}, "'concurrency.limit': Input should be greater than or equal to 1"),
    ("notify", {"on": ["failed"], "webhook_secret": "x", "url": "https://hooks.example/abc"},
     "'notify.0.url': Extra inputs are not permitted"),
    ("notify", {"on": ["exploded"], "webhook_secret": "x"}, "'notify.0.on.0': Input should be"),
    ("trigger", {"after": ["a"], "when": "completed"}, "'trigger.when': Extra inputs are not permitted"),
])
def test_unknown_or_bad_policy_keys_fail_with_file_and_line_before_a_run(demo_project, run_cli, key, value, says):
    name = unique("badpolicy")
    _gated_pipeline(demo_project, name, None)
    path = demo_project / "flows" / f"{name}.yaml"
    path.write_text(path.read_text() + yaml.safe_dump({key: value}, sort_keys=False))
    line = one_line_error(run_cli(demo_project, "run", name, "--execution-date", "2024-03-01"))
    at = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.startswith(f"{key}:"))
    assert f"flows/{name}.yaml:" in line and says in line, line
    assert int(line.split(f"flows/{name}.yaml:")[1].split(":")[0]) >= at, line
    assert "hooks.example" not in line
