"""The run summary artifact, read back through the Prefect API: one markdown artifact per run whose
block table matches the run's summary.json row by row, and for each failure the error, the compiled
SQL file (which exists), the retry command and, for a failing dbt test, its failure count and the
relation holding its failing rows (which holds that many rows)."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import cli, copy_project
from tests.support import dbt_changes
from tests.support.runs import duckdb_rows, flow_run_id

FAILING_TEST = """{{ config(store_failures=true) }}
-- the monthly revenue mart's one row, twice: a test that always fails with 2 failures
select m.*, two.n from {{ ref('mart_monthly_revenue') }} m cross join (select 1 as n union all select 2 as n) two
"""


def run_artifacts(run_id: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The block table of the artifact (its "## Blocks" section): block name -> its cells."""
    rows = {}
    blocks = markdown.split("\n## Blocks\n", 1)[1].split("\n## ", 1)[0]
    for line in blocks.splitlines():
        if line.startswith("| ") and not line.startswith("| block |"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            rows[cells[0]] = cells
    return rows


def section(markdown: str, block: str) -> str:
    match = re.search(rf"^### {re.escape(block)} \(.*?(?=^##|\Z)", markdown, re.S | re.M)
    assert match, f"no section for {block} in:\n{markdown[-3000:]}"
    return match.group(0)


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    project = copy_project(tmp_path_factory.mktemp("artifacts") / "project")
    dbt_changes.add_failing_model(project)
    dbt_changes.write(project, f"{dbt_changes.DEMO}/tests/revenue_rows_fail.sql", FAILING_TEST)
    result = cli(project, "run", "demo", "--execution-date", "2024-02-01")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    run_id = flow_run_id(result.stdout)
    summary = json.loads((project / ".mage_dbt" / "runs" / run_id / "summary.json").read_text())
    return project, run_id, summary


def test_one_markdown_artifact_per_run_with_the_block_table_of_the_run(failed_run):
    project, run_id, summary = failed_run
    artifacts = run_artifacts(run_id)
    assert [(a.key, a.type) for a in artifacts] == [("mage-dbt-run-demo", "markdown")]
    markdown = artifacts[0].data
    rows = table_rows(markdown)
    assert set(rows) == set(summary["results"])  # every block, nothing else
    for name, result in summary["results"].items():
        block, kind, status, seconds, rows_cell, message = rows[name]
        assert kind == result["kind"]
        assert ("warn" if result["dbt_status"] == "warn" else result["status"]) in status, (name, status)
        assert float(seconds) == pytest.approx(result["seconds"], abs=0.006)
        assert rows_cell == ("" if result["rows"] is None else str(result["rows"]))
        if result["message"]:
            assert message.replace("\\|", "|")[:60].rstrip("…") in " ".join(result["message"].split())
    assert "warn" in rows["warn_on_orders"][2]  # a warning is shown as a warning, not a success
    counts = {s: sum(1 for r in summary["results"].values() if r["status"] == s) for s in ("failed", "skipped")}
    assert f"{counts['failed']} failed" in markdown and f"{counts['skipped']} skipped" in markdown


def test_failed_model_section_has_error_compiled_sql_and_retry_command(failed_run):
    project, run_id, summary = failed_run
    markdown = run_artifacts(run_id)[0].data
    text = section(markdown, "fct_broken")
    assert "Could not convert string 'x' to INT32" in text  # dbt's own error
    compiled = re.search(r"compiled SQL: `([^`]+)`", text).group(1)
    assert compiled.endswith("compiled/demo/models/marts/fct_broken.sql")
    assert "cast('x' as integer)" in open(compiled).read()  # the file dbt ran
    assert f"mage-dbt retry --run {run_id}" in text
    assert "full-refresh" not in text  # a table model: a retry is the fix, not a full refresh


def test_failing_dbt_test_shows_failure_count_and_stored_failures_relation(failed_run):
    project, run_id, summary = failed_run
    result = summary["results"]["revenue_rows_fail"]
    assert (result["status"], result["failures"]) == ("failed", 2)
    relation = result["failures_relation"]
    assert relation and "revenue_rows_fail" in relation
    text = section(run_artifacts(run_id)[0].data, "revenue_rows_fail")
    assert "failures: **2** failing row(s)" in text
    assert f"failing rows stored in `{relation}`" in text
    compiled = re.search(r"compiled SQL: `([^`]+)`", text).group(1)
    assert compiled.endswith("compiled/demo/tests/revenue_rows_fail.sql") and open(compiled).read()
    assert duckdb_rows(project, f"select count(*) from {relation}") == [(2,)]  # the rows are there


def test_failed_model_and_failing_test_sections_on_postgres(demo_project, pg_env):
    from tests.support import postgres

    dbt_changes.reset_pg_schemas(pg_env)
    dbt_changes.add_failing_model(demo_project)
    dbt_changes.write(demo_project, f"{dbt_changes.DEMO}/tests/revenue_rows_fail.sql", FAILING_TEST)
    result = cli(demo_project, "run", "demo", "--execution-date", "2024-02-01", "--target", "pg", env=pg_env)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    run_id = flow_run_id(result.stdout)
    summary = json.loads((demo_project / ".mage_dbt" / "runs" / run_id / "summary.json").read_text())["results"]
    markdown = run_artifacts(run_id)[0].data
    assert set(table_rows(markdown)) == set(summary)
    broken = section(markdown, "fct_broken")
    assert 'invalid input syntax for type integer: "x"' in broken and f"mage-dbt retry --run {run_id}" in broken
    assert "cast('x' as integer)" in open(re.search(r"compiled SQL: `([^`]+)`", broken).group(1)).read()
    relation = summary["revenue_rows_fail"]["failures_relation"]
    failing = section(markdown, "revenue_rows_fail")
    assert "failures: **2** failing row(s)" in failing and f"failing rows stored in `{relation}`" in failing
    assert postgres.query(pg_env, f"select count(*) from {relation}") == [(2,)]


def test_incremental_model_failure_names_the_targeted_full_refresh(failed_run):
    from mage_dbt.pipelines.pipeline import load_pipeline
    from mage_dbt.runs.block_results import BlockResult
    from mage_dbt.runs.run_artifacts import retry_commands
    from mage_dbt.settings import load_settings

    project, run_id, summary = failed_run
    resolved = load_pipeline(load_settings(project), "demo")
    failed = BlockResult(name="fct_orders", kind="dbt_model", status="failed", message="boom")
    assert resolved.manifest.nodes[resolved.blocks["fct_orders"].unique_id].is_incremental
    assert retry_commands(resolved, failed, run_id, "2024-02-01") == [
        f"mage-dbt retry --run {run_id}",
        "mage-dbt full-refresh demo --select fct_orders --execution-date 2024-02-01"]


def test_backfill_publishes_progress_then_a_final_table_and_each_interval_its_summary(demo_project):
    from tests.test_backfill_support import backfill_ids, flow_runs, write_pipeline

    write_pipeline(demo_project, "bfart", ["+stg_orders", "+stg_customers", "+stg_payments"], command="build")
    result = cli(demo_project, "backfill", "bfart", "--start", "2024-02-01", "--end", "2024-02-03", "--yes")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [backfill_id] = backfill_ids(demo_project)
    [parent] = flow_runs(backfill_id, "mage-dbt-backfill")
    by_type = {a.type: a for a in run_artifacts(str(parent.id))}
    assert set(by_type) == {"progress", "table"}
    assert float(by_type["progress"].data) == 100.0  # updated as each of the 3 intervals finished
    table = by_type["table"]
    assert table.key == "mage-dbt-backfill-bfart"
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [(r["interval"], r["status"]) for r in rows] == [
        ("2024-02-01", "completed"), ("2024-02-02", "completed"), ("2024-02-03", "completed")], rows
    intervals = flow_runs(backfill_id)
    assert {str(r["flow run"]) for r in rows} == {str(r.id) for r in intervals}
    for run in intervals:  # every interval run has its own run summary
        assert [a.key for a in run_artifacts(str(run.id))] == ["mage-dbt-run-bfart"]


def test_failed_model_is_a_failed_materialization_and_skipped_models_none(failed_run):
    from tests.support.asset_events import materializations

    project, run_id, summary = failed_run
    ok = [n for n, r in summary["results"].items() if r["kind"] in ("dbt_model", "dbt_seed", "dbt_snapshot")
          and r["status"] in ("success", "failed")]
    found = materializations(run_id, len(ok) + 1)  # + land_orders' source table
    by_block = {e["payload"]["block"]: e for e in found.values()}
    assert by_block["fct_broken"]["event"] == "prefect.asset.materialization.failed"
    assert by_block["fct_broken"]["resource"]["prefect.resource.id"].endswith("/main/fct_broken")
    assert "broken_downstream" not in by_block  # skipped: it wrote nothing
    assert by_block["fct_orders"]["event"] == "prefect.asset.materialization.succeeded"


def test_test_results_on_task_runs_failure_count_stored_relation_and_warnings_as_warnings(failed_run):
    from tests.support.runs import task_runs

    project, run_id, summary = failed_run
    runs = task_runs(run_id)
    failing = runs["revenue_rows_fail"].state
    assert (failing.type.value, failing.name) == ("FAILED", "Failed")
    assert "Got 2 results" in failing.message
    assert f"failing rows stored in {summary['results']['revenue_rows_fail']['failures_relation']}" in failing.message
    warned = runs["warn_on_orders"].state
    assert (warned.type.value, warned.name) == ("COMPLETED", "Warn")  # not a plain success
    assert "configured to warn" in warned.message
    assert summary["results"]["warn_on_orders"]["failures"] == 1


@pytest.mark.parametrize("every, expected", [(0.0, [25.0, 50.0, 75.0, 100.0]),
                                             (3600.0, [25.0, 50.0, 50.0, 100.0])])
def test_backfill_progress_artifact_moves_as_intervals_finish(every, expected, monkeypatch):
    """Each interval's end moves it; a burst of ends (a microbatch phase ends them all at once) makes
    one update per UPDATE_SECONDS, and the last interval always updates."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    from mage_dbt.backfill import artifacts as backfill_artifacts
    from mage_dbt.backfill.artifacts import BackfillArtifacts

    monkeypatch.setattr(backfill_artifacts, "UPDATE_SECONDS", every)

    def progress(artifact_id) -> float:
        with get_client(sync_client=True) as client:
            [found] = client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[artifact_id])))
        return float(found.data)

    @flow(persist_result=False)
    def backfill_like() -> list[float]:
        artifacts = BackfillArtifacts(enabled=True)
        artifacts.begin("bf-1", total=4, already_done=1)  # one interval completed by an earlier attempt
        seen = [progress(artifacts.progress_id)]
        for label in ("2024-02-02", "2024-02-03", "2024-02-04"):
            artifacts.finished(label, 1.5)
            seen.append(progress(artifacts.progress_id))
        return seen

    assert backfill_like() == expected
