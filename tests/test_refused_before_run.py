"""Issue 22: the refusals the pipeline flow used to make inside its flow run are made by `mage-dbt run`
before a flow run exists — a DuckDB file another process holds, a DuckDB file in a read-only folder,
on_drift: fail. Each is exit 2 and one line (cause and fix, word for word); the Prefect server has no
new flow run of the pipeline and the data folder no run record or process lock."""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from tests.conftest import cli
from tests.support import refresh as r
from tests.support.block_pipelines import one_line_error
from tests.support.fixture_projects import duckdb_file_in
from tests.test_cli_usage_errors import _cli_under, _read_only


def _flow_runs_of(pipeline: str) -> set[str]:
    """The ids of the pipeline's flow runs on the test session's Prefect server (named <pipeline>-<date>, or
    rebuild-<pipeline>-<dates>: each test's pipeline name is its own)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=pipeline)),
                                     limit=200)
    return {str(run.id) for run in runs}


def _no_run_records(project: Path, before: set[str] = frozenset()) -> None:
    runs = project / ".mage_dbt" / "runs"
    left = {p.name for p in runs.iterdir()} - set(before) if runs.exists() else set()
    assert not left, f"run records (and process locks) left behind: {left}"


def test_a_duckdb_file_another_process_holds_refuses_the_run_before_a_flow_run(demo_project):
    (demo_project / ".mage_dbt").mkdir()
    database = demo_project / ".mage_dbt" / "demo.duckdb"
    # A unique pipeline name: the flow runs counted are this test's only, whatever runs beside it.
    (demo_project / "flows" / "heldrun.yaml").write_text((demo_project / "flows" / "demo.yaml").read_text())
    before = _flow_runs_of("heldrun")
    with duckdb.connect(str(database)) as writer:  # another process writing the file: this test's
        writer.execute("create table marker as select 1 as x")
        line = one_line_error(cli(demo_project, "run", "heldrun", "-d", "2031-09-01"))
    assert line.startswith(f"error: cannot open DuckDB database {database} (target 'duckdb'): IO Error: Could not "
                           f"set lock on file \"{database}\": Conflicting lock is held in "), line
    assert f"(PID {os.getpid()})" in line, line
    assert line.endswith(" — another process holds the file (the PID named: another mage-dbt run, dbt or a DuckDB "
                         "client); run again once it is done"), line
    assert _flow_runs_of("heldrun") == before
    _no_run_records(demo_project)
    with duckdb.connect(str(database), read_only=True) as reader:  # the refused run changed nothing
        assert [t for (t,) in reader.execute("select table_name from information_schema.tables").fetchall()] == [
            "marker"]


def test_a_full_refresh_and_a_rebuild_on_a_held_duckdb_file_are_refused_before_a_flow_run(demo_project):
    (demo_project / ".mage_dbt").mkdir()
    database = demo_project / ".mage_dbt" / "demo.duckdb"
    (demo_project / "flows" / "heldfr.yaml").write_text((demo_project / "flows" / "demo.yaml").read_text())
    before = _flow_runs_of("heldfr")
    commands = (["full-refresh", "heldfr", "--select", "fct_orders", "-d", "2031-09-03"],
                ["rebuild", "heldfr", "--select", "fct_orders", "--start", "2031-09-03", "--end", "2031-09-04"])
    with duckdb.connect(str(database)):
        lines = [one_line_error(cli(demo_project, *command)) for command in commands]
    for line in lines:
        assert line.startswith(f"error: cannot open DuckDB database {database} (target 'duckdb'): "), line
        assert line.endswith("; run again once it is done"), line
    assert _flow_runs_of("heldfr") == before
    _no_run_records(demo_project)


def test_a_duckdb_file_in_a_read_only_folder_refuses_the_run_before_a_flow_run(demo_project, tmp_path):
    folder = tmp_path / "ro"
    duckdb_file_in(demo_project, folder)
    profiles = demo_project / "profiles.yml"
    (demo_project / "flows" / "rofolder.yaml").write_text((demo_project / "flows" / "demo.yaml").read_text())
    before = _flow_runs_of("rofolder")
    prefix, undo = _read_only(folder)
    try:
        result = _cli_under(prefix, demo_project, "run", "rofolder", "-d", "2031-09-02")
    finally:
        undo()
    line = one_line_error(result)
    if os.geteuid() == 0:  # a read-only mount
        assert line == (
            f"error: cannot open DuckDB database {folder}/demo.duckdb (target 'duckdb'): IO Error: Cannot open file "
            f"\"{folder}/demo.duckdb\": Read-only file system — the folder {folder} is on a read-only file system: "
            f"make it writable, or set `path:` of target 'duckdb' in {profiles} to a writable place")
    else:
        assert line.startswith(f"error: cannot open DuckDB database {folder}/demo.duckdb (target 'duckdb'): "), line
        assert line.endswith(f" — give this user write access to {folder}, or set `path:` of target 'duckdb' "
                             "elsewhere"), line
    assert _flow_runs_of("rofolder") == before
    _no_run_records(demo_project)
    assert list(folder.iterdir()) == []


def test_on_drift_fail_refuses_the_run_before_a_flow_run(demo_project):
    pipeline = r.write_pipeline(demo_project, name="driftfail")
    r.ok(cli(demo_project, "run", pipeline, "-d", "2024-02-01"))
    r.add_ltv_column(demo_project)
    before_runs = _flow_runs_of(pipeline)
    before_records = {p.name for p in (demo_project / ".mage_dbt" / "runs").iterdir()}
    line = one_line_error(cli(demo_project, "run", pipeline, "-d", "2024-02-02"))
    assert line == (
        "error: pipeline 'driftfail': incremental model customer_ltv_daily no longer matches the existing table "
        "(customer_ltv_daily: added lifetime_revenue_cents (BIGINT)); nothing ran — rebuild with "
        "`mage-dbt full-refresh driftfail --select customer_ltv_daily -d 2024-02-02` (mage-dbt rebuild refills its "
        "history), or set on_drift: full_refresh or warn in flows/driftfail.yaml")
    assert _flow_runs_of(pipeline) == before_runs
    _no_run_records(demo_project, before_records)
