"""Slim runs (issue 17): `mage-dbt run PIPELINE --changed` runs only the dbt nodes modified since the
last successful run on the state target and their downstream (dbt's state:modified+), and defers
to that run's relations for the parents it does not build. Real dbt on DuckDB, states through the
Prefect API."""

from __future__ import annotations

from pathlib import Path

import duckdb

from tests.conftest import cli
from tests.test_backfill_support import invocations, write_pipeline
from tests.test_reuse import DAY, _builds, _downstream, _run, _states, _summary

DEV_TARGET = """
    dev:
      type: duckdb
      path: "{{ env_var('MAGE_DBT_DATA_DIR', '.mage_dbt') }}/demo.duckdb"
      schema: dev
      threads: 4
"""


def _add_dev_target(project: Path) -> None:
    profiles = project / "profiles.yml"
    text = profiles.read_text()
    marker = "      threads: 4\n"
    profiles.write_text(text.replace(marker, marker + DEV_TARGET, 1))


def _relations(project: Path, schema: str) -> set[str]:
    with duckdb.connect(str(project / ".mage_dbt" / "demo.duckdb"), read_only=True) as conn:
        rows = conn.execute("select table_name from information_schema.tables where table_schema = ?",
                            [schema]).fetchall()
    return {name for (name,) in rows}


def test_changed_runs_modified_nodes_and_downstream_deferring_to_the_state(demo_project: Path):
    project = demo_project
    _add_dev_target(project)
    write_pipeline(project, "stable", ["*"], command="build", exclude=["source:landing+"])

    refused = cli(project, "run", "stable", "-d", DAY, "--changed")
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "no successful run" in refused.stderr and "Traceback" not in refused.stderr

    built = set(_states(_run(project, "stable", "-d", DAY)))  # production: target duckdb, schema main

    before = len(invocations(project))
    nothing = _run(project, "stable", "-d", DAY, "--changed")
    assert _states(nothing) == {} and _builds(project, before) == []
    assert _summary(project, nothing)["results"] == {}

    staging = project / "dbt_projects" / "demo" / "models" / "staging" / "stg_payments.sql"
    staging.write_text(staging.read_text().replace("payment_id,", "payment_id,\n    1 as payment_version,", 1))
    expected = _downstream(project, "model.demo.stg_payments") & built
    assert "fct_orders" in expected and "stg_orders" not in expected

    no_state = cli(project, "run", "stable", "-d", DAY, "--changed", "--target", "dev")
    assert no_state.returncode == 2 and "target 'dev'" in no_state.stderr, no_state.stderr[-2000:]

    before = len(invocations(project))
    slim = _run(project, "stable", "-d", DAY, "--changed", "--target", "dev", "--state-target", "duckdb")
    states = _states(slim)
    assert set(states) == expected and set(states.values()) == {"Completed"}, states
    [build] = _builds(project, before)
    assert build["nodes"] == len(expected)

    dev = _relations(project, "dev")
    assert {"stg_payments", "fct_orders", "dim_customers"} <= dev
    # the parents it did not build came from production (deferred), not from dev
    assert not {"stg_orders", "stg_customers", "raw_orders"} & dev
    with duckdb.connect(str(project / ".mage_dbt" / "demo.duckdb"), read_only=True) as conn:
        dev_rows = conn.execute("select count(*) from dev.fct_orders").fetchone()[0]
        prod_rows = conn.execute("select count(*) from main.fct_orders").fetchone()[0]
    assert dev_rows == prod_rows > 0
