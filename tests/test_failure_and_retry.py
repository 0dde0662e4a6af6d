"""Failure semantics and retry from failure, on the demo with one failing model added.

fct_broken (downstream of stg_orders) fails at run time; broken_downstream and its test are skipped
by dbt, the dbt_command block after_broken by the runner; every independent branch completes. A
retry re-runs exactly those four blocks, with the original execution date and vars."""

from __future__ import annotations

import json

import pytest

from tests.conftest import copy_project, cli
from tests.support import dbt_changes, postgres
from tests.support.dbt_changes import FAILED, SKIPPED, executions, invocations, states
from tests.support.runs import duckdb_rows, flow_run, flow_run_id, task_runs

ERRORS = {"duckdb": "Could not convert string 'x' to INT32", "pg": 'invalid input syntax for type integer: "x"'}


def _failing_run(project, env=None, flags=()):
    dbt_changes.add_failing_model(project)
    result = cli(project, "run", "demo", "--execution-date", "2024-02-01", "--var", "region=eu", *flags, env=env)
    return result


@pytest.fixture(scope="module")
def failed_duckdb_run(tmp_path_factory):
    """The demo copy with fct_broken, after one failed run on DuckDB: (project, CLI result)."""
    project = copy_project(tmp_path_factory.mktemp("failing") / "project")
    return project, _failing_run(project)


def _assert_failure_semantics(project, result, backend):
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    run_id = flow_run_id(result.stdout)
    summary = json.loads((project / ".mage_dbt" / "runs" / run_id / "summary.json").read_text())
    # The CLI prints the summary table: the failed and the skipped blocks with their reasons.
    for name in (*FAILED, *SKIPPED):
        assert name in result.stdout
    assert ERRORS[backend].split(":")[0] in result.stdout
    done = len(summary["results"]) - len(FAILED) - len(SKIPPED)
    assert f"{len(summary['results'])} blocks: {len(FAILED)} failed, {len(SKIPPED)} skipped, {done} success" in result.stdout

    runs = task_runs(run_id)
    assert set(runs) == set(summary["results"])  # skipped blocks are reported, not missing
    got = states(runs)
    assert {n for n, s in got.items() if s[0] == "FAILED"} == FAILED
    assert ERRORS[backend] in runs["fct_broken"].state.message  # dbt's own error message
    assert {n: s for n, s in got.items() if s[0] == "CANCELLED"} == {n: ("CANCELLED", "Skipped") for n in SKIPPED}
    # Every independent branch completed (the warn test too, as Completed/Warn).
    assert {n for n, s in got.items() if s[0] == "COMPLETED"} == set(got) - FAILED - SKIPPED
    assert got["warn_on_orders"] == ("COMPLETED", "Warn")
    assert flow_run(run_id).state.type.value == "FAILED"
    return run_id


def test_failing_model_fails_its_block_skips_downstream_and_fails_the_run_duckdb(failed_duckdb_run):
    project, result = failed_duckdb_run
    _assert_failure_semantics(project, result, "duckdb")
    assert duckdb_rows(project, "select count(*) from main.fct_daily_revenue") == [(1,)]  # sibling branch ran


def test_failing_model_fails_its_block_skips_downstream_and_fails_the_run_postgres(demo_project, pg_env):
    dbt_changes.reset_pg_schemas(pg_env)
    result = _failing_run(demo_project, env=pg_env, flags=("--target", "pg"))
    _assert_failure_semantics(demo_project, result, "pg")
    assert postgres.query(pg_env, "select count(*) from analytics.fct_daily_revenue") == [(1,)]


def test_retry_reruns_only_the_failed_and_skipped_blocks_with_the_same_parameters(failed_duckdb_run):
    project, failed = failed_duckdb_run
    original = flow_run_id(failed.stdout)
    before = len(invocations(project))
    dbt_changes.fix_failing_model(project)

    retried = cli(project, "retry", "demo")
    assert retried.returncode == 0, retried.stdout[-3000:] + retried.stderr[-3000:]
    assert f"retrying 4 of " in retried.stdout and original in retried.stdout
    new = flow_run_id(retried.stdout)
    assert new != original

    # Only the failed and skipped blocks ran, and they all succeeded now.
    assert states(task_runs(new)) == {n: ("COMPLETED", "Completed") for n in FAILED | SKIPPED}
    # The invocation log of the retry: one build of the three dbt nodes, the command block's test,
    # and nothing else (the parse is there because fct_broken.sql changed).
    log = invocations(project)[before:]
    assert [r["command"] for r in log if r["command"] not in ("parse", "compile")] == ["build", "test"], log
    assert next(r for r in log if r["command"] == "build")["nodes"] == len(FAILED | dbt_changes.SKIPPED_BY_DBT)

    # Same execution date and vars, as a new flow run that says which run it retries.
    run = flow_run(new)
    assert run.parameters["execution_date"].startswith("2024-02-01")
    assert run.parameters["vars"] == {"region": "eu"}
    assert sorted(run.parameters["select"]) == sorted(FAILED | SKIPPED)
    assert f"retry-of:{original}" in run.tags
    assert duckdb_rows(project, "select distinct loaded_for, region from main.broken_downstream") == [("2024-02-01", "eu")]

    # The failed run has been retried: nothing left to retry, for the pipeline or the new run.
    again = cli(project, "retry", "demo")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to retry" in again.stdout
    done = cli(project, "retry", "--run", new)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"nothing to retry: all 4 blocks of flow run {new}" in done.stdout
    assert len(invocations(project)) == before + len(log)  # neither ran dbt


@pytest.mark.parametrize("args, message", [
    (("--run", "00000000-0000-4000-8000-000000000000"), "no flow run 00000000-0000-4000-8000-000000000000"),
    (("--run", "yesterday"), "'yesterday' is not a flow run id"),
    ((), "nothing names the run to retry"),
    (("nope",), "unknown pipeline 'nope'"),
])
def test_retry_of_an_unknown_run_is_a_one_line_error(demo_project, args, message):
    result = cli(demo_project, "retry", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


PRODUCE = '''from mage_dbt import data_loader


@data_loader
def produce(*, execution_date, run_id, **kwargs):
    return {"day": execution_date.date().isoformat(), "made_in": run_id}
'''
CONSUME = '''from pathlib import Path

from mage_dbt import transformer


@transformer
def consume(made, *, data_dir, **kwargs):
    if (Path(data_dir) / "consume_fails").exists():
        raise RuntimeError("consume was told to fail")
    return {**made, "consumed": True}
'''


def test_retry_of_a_python_block_reads_upstream_outputs_of_the_run_it_retries(demo_project):
    from tests.support.dbt_changes import write

    write(demo_project, "flows/handoff/produce.py", PRODUCE)
    write(demo_project, "flows/handoff/consume.py", CONSUME)
    write(demo_project, "flows/handoff.yaml", "\n".join([
        "blocks:",
        "  - {name: produce, type: python, file: flows/handoff/produce.py}",
        "  - {name: consume, type: python, file: flows/handoff/consume.py, upstream: [produce]}",
        "",
    ]))
    marker = write(demo_project, ".mage_dbt/consume_fails", "")
    failed = cli(demo_project, "run", "handoff", "--execution-date", "2024-02-01")
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    original = flow_run_id(failed.stdout)
    assert states(task_runs(original))["consume"][0] == "FAILED"

    marker.unlink()
    retried = cli(demo_project, "retry", "--run", original)
    assert retried.returncode == 0, retried.stdout[-3000:] + retried.stderr[-3000:]
    new = flow_run_id(retried.stdout)
    assert set(task_runs(new)) == {"consume"}  # produce succeeded before: not re-run
    output = json.loads((demo_project / ".mage_dbt" / "outputs" / "handoff" / new / "consume.json").read_text())
    assert output == {"day": "2024-02-01", "made_in": original, "consumed": True}  # produce's output of the first run
