"""Small things a new user reads: flags in --help take no value (no `<bool>`), `blocks` names dbt
groups, and `output` of a dbt block says that dbt blocks store no output and where the table is."""

from __future__ import annotations

import pytest

from tests.conftest import cli


@pytest.mark.parametrize("verb", ["run", "full-refresh", "backfill", "graph"])
def test_flags_show_no_bool_type_in_help(tmp_path, verb):
    result = cli(tmp_path, verb, "--help", env={"COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    assert "--help" in result.stdout and "<bool>" not in result.stdout, result.stdout
    assert "<str>" in result.stdout  # options that take a value still show its type


def test_output_of_a_dbt_block_explains_where_its_data_is(demo_project):
    result = cli(demo_project, "output", "demo", "fct_orders")
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: 'fct_orders' is a dbt_model block"), result.stderr
    assert "dbt blocks store no output" in lines[0] and "run it first" not in lines[0]
    assert "select * from demo.main.fct_orders limit 10" in lines[0], lines[0]
    assert "load_orders" in lines[0]  # the blocks `output` does show

    python = cli(demo_project, "output", "demo", "load_orders")  # a Python block that never ran
    assert python.returncode == 2 and "run it first" in python.stderr, python.stderr


def test_blocks_names_the_dbt_group(demo_project):
    result = cli(demo_project, "blocks", "demo")
    assert result.returncode == 0, result.stderr
    assert "1 dbt group" in result.stdout and "units" not in result.stdout
    header = next(line for line in result.stdout.splitlines() if "block" in line and "kind" in line)
    assert "dbt group" in header and "unit" not in header
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("│")}
    assert "dbt_group_1" in rows["fct_orders"] and "dbt_group" not in rows["load_orders"]
