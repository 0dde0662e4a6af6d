"""Issue 22: mistakes that were silently accepted or blamed on the wrong thing, each checked word for
word for the file (and line), the cause and the fix; refused commands leave no flow run and no lock."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.support.block_pipelines import one_line_error
from tests.support.fixture_projects import duckdb_file_in
from tests.support.synced_project import configure
from tests.test_cli_usage_errors import _cli_under, _flow_runs_named, _read_only

DAY = "2031-08-01"


def _refused(project: Path, *args: str, env: dict | None = None) -> str:
    """The one error line of a refused `mage-dbt` command, which recorded no run."""
    line = one_line_error(cli(project, *args, env=env))
    assert not (project / ".mage_dbt" / "runs").exists()
    return line


def test_an_empty_pipeline_file_is_refused_before_any_run(demo_project):
    (demo_project / "flows" / "empty.yaml").write_text("")
    assert _refused(demo_project, "run", "empty", "-d", DAY) == (
        f"error: {demo_project}/flows/empty.yaml:1: the pipeline has nothing to run: no 'dbt:' selection and no "
        "'blocks:' — add e.g. `dbt: {select: [\"*\"]}` or a python/sql/dbt_command block (see the pipeline file "
        "format in README)")
    assert _flow_runs_named(f"empty-{DAY}") == []


def test_a_block_option_the_runner_does_not_read_is_refused_with_its_line(demo_project):
    path = demo_project / "flows" / "demo.yaml"
    lines = path.read_text().splitlines()
    at = lines.index("    file: flows/demo/load_orders.py")
    lines.insert(at + 1, "    priority: 3")
    path.write_text("\n".join(lines) + "\n")
    assert _refused(demo_project, "run", "demo", "-d", DAY) == (
        f"error: {path}:{at + 2}: block 'load_orders': unknown option 'priority' (mage_dbt does not read it, it "
        "would be ignored) — remove it; python blocks take: file, upstream, writes, poke_interval, timeout, "
        "retries, retry_delay_seconds, retry_backoff, retry_jitter_factor, timeout_seconds")
    lines[at + 1] = "    dialct: postgres"
    path.write_text("\n".join(lines) + "\n")
    assert "unknown option 'dialct'" in _refused(demo_project, "blocks", "demo")  # every verb reads the file
    sql = path.read_text().replace("    dialect: postgres", "    dialct: postgres").replace("    dialct: postgres\n", "", 1)
    path.write_text(sql)
    assert _refused(demo_project, "blocks", "demo").endswith(
        "— did you mean 'dialect'? sql blocks take: file, upstream, dialect, materialize, table, schema, check, "
        "retries, retry_delay_seconds, retry_backoff, retry_jitter_factor, timeout_seconds")


def test_malformed_profiles_yml_and_dbt_project_yml_are_named_with_their_line(demo_project):
    profiles = demo_project / "profiles.yml"
    good = profiles.read_text()
    profiles.write_text(good.replace("      type: duckdb\n", "      type: duckdb\n     threads: 4\n", 1))
    line = next(n for n, text in enumerate(profiles.read_text().splitlines(), 1) if text == "     threads: 4")
    assert _refused(demo_project, "run", "demo", "-d", DAY) == (
        f"error: {profiles}:{line}:6: malformed YAML in the warehouse connection profiles: expected <block end>, "
        "but found '<block mapping start>' — fix the indentation or quoting at that line")
    profiles.write_text(good)

    project_file = demo_project / "dbt_projects" / "demo" / "dbt_project.yml"
    project_file.write_text(project_file.read_text() + "  broken: [\n")
    refused = _refused(demo_project, "run", "demo", "-d", DAY)
    assert refused.startswith(f"error: {project_file}:"), refused
    assert "malformed YAML in dbt project 'demo': " in refused
    assert refused.endswith("— fix the indentation or quoting at that line")
    assert "profiles.yml" not in refused


def test_unknown_adapter_type_and_default_target_name_profiles_yml_not_the_project(demo_project):
    profiles = demo_project / "profiles.yml"
    good = profiles.read_text()
    lines = good.splitlines()
    type_line = lines.index("      type: duckdb") + 1
    target_line = lines.index("  target: duckdb") + 1
    profiles.write_text(good.replace("      type: duckdb", "      type: duckbd", 1))
    assert _refused(demo_project, "run", "demo", "-d", DAY) == (
        f"error: {profiles}:{type_line}: target 'duckdb' of profile 'mage_dbt_demo' has adapter type 'duckbd', "
        "which is not installed (installed: bigquery, duckdb, postgres) — fix `type:` (a typo?), or install the "
        "dbt-duckbd adapter")
    profiles.write_text(good.replace("  target: duckdb", "  target: prod", 1))
    assert _refused(demo_project, "run", "demo", "-d", DAY) == (
        f"error: {profiles}:{target_line}: the default target 'prod' of profile 'mage_dbt_demo' is not one of its "
        "outputs (duckdb, pg) — set `target:` to one of them, or add an output named 'prod' under `outputs:`")


def test_rebuild_of_a_model_that_is_not_incremental_suggests_no_flag_rebuild_lacks(demo_project):
    refused = _refused(demo_project, "rebuild", "demo", "--select", "stg_orders", "--start", "2024-01-01",
                       "--end", "2024-01-02")
    assert refused.startswith("error: --select stg_orders matches no incremental model of 'demo' (it matches "
                              "stg_orders) — incremental models there: "), refused
    assert "--include-snapshots" not in refused


def test_an_unreachable_prefect_api_url_is_one_line_naming_it_without_credentials(demo_project):
    refused = _refused(demo_project, "run", "demo", "-d", DAY,
                       env={"PREFECT_API_URL": "http://someone:s3cret@127.0.0.1:9/api"})
    assert refused == (
        "error: the Prefect server at http://127.0.0.1:9/api (PREFECT_API_URL) does not answer: [Errno 111] "
        "Connection refused — start that server (`mage-dbt server`, or `prefect server start`), or unset "
        "PREFECT_API_URL to let mage-dbt start its own local server")
    assert "s3cret" not in refused


def test_a_failed_first_git_sync_leaves_no_lock_behind(demo_project, tmp_path):
    configure(demo_project, {"name": "gone", "url": str(tmp_path / "no-such-remote.git")})
    refused = one_line_error(cli(demo_project, "sync", "gone"))
    assert "fatal: " in refused
    assert not (demo_project / "dbt_projects" / ".git_sync").exists()
    ignored = subprocess.run(["git", "check-ignore", "-q", "dbt_projects/.git_sync/x/lock"],
                             cwd=Path(__file__).resolve().parents[1])
    assert ignored.returncode == 0  # this repository (a project itself) ignores the sync folder


def test_a_duckdb_file_in_a_read_only_folder_says_so(demo_project, tmp_path):
    folder = tmp_path / "ro"
    duckdb_file_in(demo_project, folder)
    profiles = demo_project / "profiles.yml"
    prefix, undo = _read_only(folder)
    try:
        result = _cli_under(prefix, demo_project, "status", "demo")
    finally:
        undo()
    line = one_line_error(result)
    assert line.startswith(f"error: cannot open DuckDB database {folder}/demo.duckdb (target 'duckdb'): "), line
    reason = ("the folder {f} is on a read-only file system: make it writable, or set `path:` of target 'duckdb' "
              "in {p} to a writable place").format(f=folder, p=profiles)
    permission = f"give this user write access to {folder}, or set `path:` of target 'duckdb' elsewhere"
    assert line.endswith(reason) or line.endswith(permission), line
    assert "check the target" not in line
