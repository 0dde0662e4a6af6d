"""Vars that change what dbt parses: the nodes, results and tables equal plain `dbt build --vars`.

The fixture project (tests/fixtures/varswitch) is switched by vars the way real packages are: a
model `enabled:` by a var, `ref()` inside `{% if var(...) %}`, a package model enabled by a var in
the package's dbt_project.yml, an alias rendered from a var, a model enabled by the execution date
(when the `gated` pipeline turns its gate on), and the date read in SQL through a macro that
checks it. Plain dbt runs on a copy of the same project with the same `--vars`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import duckdb
import pytest

from mage_dbt.dates import dbt_vars, interval_for
from tests.conftest import BIN, cli
from tests.support import postgres

FIXTURE = Path(__file__).parent / "fixtures" / "varswitch"
DAY = "2024-02-06"
SETTINGS = {
    "defaults": {},
    "switched": {"use_alt": True, "pkg_extra_enabled": True, "suffix": "x", "region": "us"},
}


def make_project(dest: Path) -> Path:
    """A copy of the fixture with its local package installed by `dbt deps` (a link in dbt_packages/)."""
    shutil.copytree(FIXTURE, dest, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages", ".mage_dbt"))
    dbt_dir = dest / "dbt_projects" / "varswitch"
    result = subprocess.run([str(BIN / "dbt"), "deps", "--project-dir", str(dbt_dir), "--profiles-dir", str(dest)],
                            cwd=dbt_dir, capture_output=True, text=True, env={**os.environ, "DO_NOT_TRACK": "1"})
    assert result.returncode == 0, result.stdout[-2000:]
    assert (dbt_dir / "dbt_packages" / "switchpkg").is_symlink()
    return dest


def plain_dbt_build(project: Path, run_vars: dict, env: dict, target: str) -> dict[str, str]:
    """`dbt build --vars` as a user would run it; returns {unique_id: status} from run_results.json."""
    dbt_dir = project / "dbt_projects" / "varswitch"
    (project / ".mage_dbt").mkdir(exist_ok=True)
    result = subprocess.run(
        [str(BIN / "dbt"), "build", "--project-dir", str(dbt_dir), "--profiles-dir", str(project),
         "--target", target, "--vars", json.dumps(run_vars)],
        cwd=project, capture_output=True, text=True,
        env={**os.environ, **env, "MAGE_DBT_DATA_DIR": str(project / ".mage_dbt"), "DO_NOT_TRACK": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:]
    results = json.loads((dbt_dir / "target" / "run_results.json").read_text())["results"]
    return {r["unique_id"]: r["status"] for r in results}


def mage_run(project: Path, pipeline: str, day: str, cli_vars: dict, env: dict, target: str) -> dict[str, str]:
    """`mage-dbt run`; returns {unique_id: dbt status} from the run's summary."""
    args = [f"--var={k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in cli_vars.items()]
    result = cli(project, "run", pipeline, "-d", day, "--target", target, *args, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_id = re.search(r"flow run: (\S+)", result.stdout).group(1)
    summary = json.loads((project / ".mage_dbt" / "runs" / run_id / "summary.json").read_text())
    return {r["unique_id"]: r["dbt_status"] for r in summary["results"].values() if r.get("unique_id")}


def run_vars_for(pipeline_vars: dict, cli_vars: dict, day: str) -> dict:
    """The --vars a mage_dbt run sends: pipeline vars, then the CLI's, then the run's dates."""
    return {**pipeline_vars, **cli_vars, **dbt_vars(interval_for(day, "day", "UTC"))}


def duckdb_tables(project: Path) -> dict[str, list[tuple]]:
    with duckdb.connect(str(project / ".mage_dbt" / "varswitch.duckdb"), read_only=True) as conn:
        names = [r[0] for r in conn.execute(
            "select table_name from information_schema.tables where table_schema = 'main' order by 1").fetchall()]
        return {n: sorted(conn.execute(f'select * from main."{n}"').fetchall(), key=repr) for n in names}


def pg_tables(env: dict, schema: str) -> dict[str, list[tuple]]:
    names = [r[0] for r in postgres.query(env, (
        f"select table_name from information_schema.tables where table_schema = '{schema}' order by 1"))]
    return {n: sorted(postgres.query(env, f'select * from "{schema}"."{n}"'), key=repr) for n in names}


def parses(project: Path) -> list[dict]:
    log = project / ".mage_dbt" / "logs" / "dbt_invocations.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return [r for r in records if r["command"] == "parse"]


def test_var_switched_project_equals_plain_dbt_on_duckdb(tmp_path):
    ours = make_project(tmp_path / "ours")
    theirs = make_project(tmp_path / "theirs")
    node_sets = {}
    for name in ("defaults", "switched", "defaults"):  # back again: the first parse serves it
        cli_vars = SETTINGS[name]
        expected = plain_dbt_build(theirs, run_vars_for({}, cli_vars, DAY), {}, "duckdb")
        got = mage_run(ours, "switch", DAY, cli_vars, {}, "duckdb")
        assert got == expected, name
        assert duckdb_tables(ours) == duckdb_tables(theirs), name
        node_sets[name] = set(got)
    # The vars really switch the node set (else this test could not fail).
    assert "model.varswitch.alt_events" in node_sets["switched"] - node_sets["defaults"]
    assert "model.switchpkg.pkg_extra" in node_sets["switched"] - node_sets["defaults"]
    assert "renamed_x" in duckdb_tables(ours) and "renamed_plain" in duckdb_tables(ours)
    assert len(parses(ours)) == 2, parses(ours)  # one per var setting, none for the repeat


def test_var_switched_project_equals_plain_dbt_on_postgres(tmp_path, pg_env):
    ours = make_project(tmp_path / "ours")
    theirs = make_project(tmp_path / "theirs")
    ours_env = {**pg_env, "MAGE_DBT_PG_SCHEMA": "vs_ours"}
    theirs_env = {**pg_env, "MAGE_DBT_PG_SCHEMA": "vs_theirs"}
    for name in ("switched", "defaults"):
        cli_vars = SETTINGS[name]
        expected = plain_dbt_build(theirs, run_vars_for({}, cli_vars, DAY), theirs_env, "pg")
        got = mage_run(ours, "switch", DAY, cli_vars, ours_env, "pg")
        assert got == expected, name
        assert pg_tables(pg_env, "vs_ours") == pg_tables(pg_env, "vs_theirs"), name
    assert len(parses(ours)) == 2


def test_backfill_parses_once_when_the_date_is_read_only_in_sql(tmp_path):
    project = make_project(tmp_path / "ours")
    result = cli(project, "backfill", "switch", "--start", "2024-02-01", "--end", "2024-02-10")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(parses(project)) == 1, parses(project)
    with duckdb.connect(str(project / ".mage_dbt" / "varswitch.duckdb"), read_only=True) as conn:
        loaded = conn.execute("select event_id, cast(loaded_for as varchar) from main.daily_events order by 1").fetchall()
    # every eu event of the range, each loaded by the run of its own date
    assert loaded == [(1, "2024-02-01"), (3, "2024-02-02"), (5, "2024-02-05"), (6, "2024-02-06"),
                      (8, "2024-02-08"), (10, "2024-02-10")]


def test_a_model_enabled_by_date_parses_once_per_outcome_and_says_so(tmp_path):
    project = make_project(tmp_path / "ours")
    result = cli(project, "backfill", "gated", "--start", "2024-02-03", "--end", "2024-02-07")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # 02-03 and 02-04 share the parse without late_events, 02-05..02-07 the one with it
    assert len(parses(project)) == 2, parses(project)
    runs = sorted((project / ".mage_dbt" / "runs").glob("*/summary.json"))
    by_date = {}
    for path in runs:
        summary = json.loads(path.read_text())
        by_date[summary["execution_date"][:10]] = set(summary["results"])
    assert "late_events" not in by_date["2024-02-04"]
    assert "late_events" in by_date["2024-02-05"]
    said = (result.stdout + result.stderr).count("changes what dbt parses")
    log_said = _flow_logs_mentioning("changes what dbt parses")
    assert said + log_said >= 1


def _flow_logs_mentioning(text: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterLevel

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(level=LogFilterLevel(ge_=30)), limit=200)
    return sum(text in log.message for log in logs)


@pytest.mark.parametrize("installed", ["local package (link)", "real folder"])
def test_an_edit_inside_dbt_packages_reaches_status_and_the_next_run(tmp_path, installed):
    project = make_project(tmp_path / "ours")
    packages = project / "dbt_projects" / "varswitch" / "dbt_packages"
    if installed == "real folder":  # as `dbt deps` leaves a hub or git package
        link = packages / "switchpkg"
        source = link.resolve()
        link.unlink()
        shutil.copytree(source, link)
    first = mage_run(project, "switch", DAY, {}, {}, "duckdb")
    assert "model.switchpkg.pkg_base" in first
    status = cli(project, "status", "switch", "-d", DAY)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout

    model = packages / "switchpkg" / "models" / "pkg_base.sql"
    model.write_text("select 1 as id, 'edited' as kind, 2 as added_column\n")
    incremental = packages / "switchpkg" / "models" / "pkg_incr.sql"
    assert not incremental.exists()
    mage_run(project, "switch", DAY, {}, {}, "duckdb")
    tables = duckdb_tables(project)
    assert tables["pkg_base"] == [(1, "edited", 2)]

    incremental.write_text("{{ config(materialized='incremental') }}\nselect id from {{ ref('pkg_base') }}\n")
    mage_run(project, "switch", DAY, {}, {}, "duckdb")
    incremental.write_text("{{ config(materialized='incremental') }}\nselect id, kind from {{ ref('pkg_base') }}\n")
    status = cli(project, "status", "switch", "-d", DAY)
    assert "pkg_incr" in status.stdout and "drifted" in status.stdout, status.stdout
