"""Generic dbt command blocks: run, test, source freshness, run-operation and show as pipeline
blocks, templated by the run context, with their output in the block's Prefect task run log;
bad commands and orchestrator-owned flags fail before the run, with exit 2 and nothing touched."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import cli
from tests.support import demo_data
from tests.support.dbt_changes import DEMO, block_output, executions, invocations, states, write
from tests.support.runs import duckdb_rows, flow_run_id, task_runs

PIPELINE = {
    "description": "generic dbt command blocks around the demo seeds",
    "dbt": {"project": "demo", "select": ["raw_orders", "raw_customers"]},
    "vars": {"region": "eu"},
    "blocks": [
        {"name": "stage_orders", "type": "dbt_command", "command": "run --select stg_orders stg_customers",
         "upstream": ["raw_orders", "raw_customers"]},
        {"name": "test_orders", "type": "dbt_command",
         "command": "test --select stg_orders --exclude no_cancelled_orders --indirect-selection cautious", "upstream": ["stage_orders"]},
        {"name": "freshness", "type": "dbt_command", "command": "source freshness --select source:shop_raw",
         "upstream": ["raw_orders"]},
        {"name": "announce", "type": "dbt_command", "upstream": ["raw_orders"],
         "command": "run-operation announce --args '{day: \"{{ execution_date }}\", region: \"{{ vars.region }}\"}'"},
        {"name": "day_orders", "type": "dbt_command", "upstream": ["stage_orders"],
         "command": "show --inline \"{% raw %}select order_id, status from {{ ref('stg_orders') }}{% endraw %} "
                    "where order_date = '{{ execution_date }}' order by order_id, updated_at\" --limit 100"},
        {"name": "check_cancelled", "type": "dbt_command", "command": "test --select no_cancelled_orders",
         "upstream": ["stage_orders"]},
        {"name": "after_check", "type": "dbt_command", "command": "run --select stg_payments",
         "upstream": ["check_cancelled"]},
    ],
}


def _prepare(project):
    """A macro that logs, a source with a freshness rule, a singular test that fails (orders do get
    cancelled), and the pipeline above, all in the private copy."""
    write(project, f"{DEMO}/macros/announce.sql", """{% macro announce(day, region) %}
  {% set n = run_query("select count(*) from " ~ ref('raw_orders')).columns[0].values()[0] %}
  {{ log("announce " ~ day ~ " " ~ region ~ " orders=" ~ n, info=True) }}
{% endmacro %}
""")
    write(project, f"{DEMO}/models/staging/_shop_sources.yml", yaml.safe_dump({"version": 2, "sources": [{
        "name": "shop_raw", "schema": "{{ target.schema }}_raw",
        "tables": [{"name": "raw_orders", "config": {
            "loaded_at_field": "updated_at", "freshness": {"warn_after": {"count": 1, "period": "day"}}}}],
    }]}))
    write(project, f"{DEMO}/tests/no_cancelled_orders.sql",
          "select * from {{ ref('stg_orders') }} where status = 'cancelled'\n")
    write(project, "flows/commands.yaml", yaml.safe_dump(PIPELINE, sort_keys=False))


def test_command_blocks_run_templated_and_log_their_output(demo_project):
    _prepare(demo_project)
    result = cli(demo_project, "run", "commands", "--execution-date", "2024-02-01", "--var", "region=nl")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]  # check_cancelled fails
    runs = task_runs(flow_run_id(result.stdout))
    got = states(runs)
    assert got.pop("check_cancelled") == ("FAILED", "Failed")
    assert "no_cancelled_orders" in runs["check_cancelled"].state.message
    assert got.pop("after_check") == ("CANCELLED", "Skipped")
    assert got == {n: ("COMPLETED", "Completed") for n in got}
    outputs = {name: block_output(runs[name].id) for name in (b["name"] for b in PIPELINE["blocks"][:-1])}

    run = outputs["stage_orders"]
    assert run["counts"] == {"success": 2}
    assert {n["unique_id"] for n in run["nodes"]} == {"model.demo.stg_orders", "model.demo.stg_customers"}

    test = outputs["test_orders"]
    assert set(test["counts"]) == {"pass"} and test["counts"]["pass"] >= 5
    assert "test.demo.no_cancelled_orders" not in {n["unique_id"] for n in test["nodes"]}

    orders = demo_data.orders()
    fresh = outputs["freshness"]
    assert fresh["counts"] == {"warn": 1}
    assert fresh["nodes"][0]["unique_id"] == "source.demo.shop_raw.raw_orders"
    assert fresh["nodes"][0]["max_loaded_at"].startswith(orders["updated_at"].max().isoformat())

    # run-operation: the macro's logged messages, with the templated execution date and run var
    assert outputs["announce"]["messages"] == [f"announce 2024-02-01 nl orders={len(orders)}"]

    # show: the previewed rows, computed independently from the seed CSV
    day = orders[orders["order_date"] == "2024-02-01"].sort_values(["order_id", "updated_at"])
    show = outputs["day_orders"]
    assert show["columns"] == ["order_id", "status"]
    assert show["rows"] == [{"order_id": int(o), "status": s.lower()} for o, s in zip(day["order_id"], day["status"])]
    assert len(show["rows"]) > 0

    failed = outputs["check_cancelled"]
    assert failed["success"] is False and failed["counts"] == {"fail": 1}

    # The skipped block touched nothing; every dbt call reused the one parsed manifest.
    assert duckdb_rows(demo_project, "select count(*) from information_schema.tables "
                                     "where table_name = 'stg_payments'") == [(0,)]
    log = executions(demo_project)
    assert sorted(r["command"] for r in log) == sorted(
        ["parse", "build", "run", "test", "source freshness", "run-operation", "show", "test"]), log
    assert all(r["cached_manifest"] for r in log if r["command"] != "parse")


@pytest.mark.parametrize("command, flags, message", [
    ("rn --select stg_orders", (), "unknown dbt command 'rn'"),
    ("run --selct stg_orders", (), "No such option '--selct'"),
    ("run --project-dir /tmp --select stg_orders", (), "--project-dir is set by mage_dbt"),
    ("run --target duckdb --select stg_orders", ("--target", "duckdb"), "--target is set by the run (target 'duckdb')"),
    ("run --vars '{execution_date: 2020-01-01}'", (), "--vars sets execution_date, which the run owns"),
])
def test_bad_command_fails_before_the_run_with_exit_2(demo_project, command, flags, message):
    write(demo_project, "flows/bad.yaml", yaml.safe_dump({
        "dbt": {"project": "demo", "select": ["raw_orders"]},
        "blocks": [{"name": "bad_block", "type": "dbt_command", "command": command, "upstream": ["raw_orders"]}],
    }))
    result = cli(demo_project, "run", "bad", "--execution-date", "2024-02-01", *flags)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: flows/bad.yaml: dbt_command block 'bad_block'") and message in lines[0], lines
    assert "Traceback" not in result.stdout + result.stderr
    data = demo_project / ".mage_dbt"
    assert not (data / "demo.duckdb").exists() and not (data / "runs").exists()  # no run, no table
    assert invocations(demo_project) == []  # not even a parse


def _check(project, command, **spec_keys):
    from mage_dbt.blocks.dbt_command import check_dbt_command_blocks
    from mage_dbt.pipelines.spec import PipelineSpec
    from mage_dbt.settings import load_settings

    spec = PipelineSpec.model_validate({"name": "t", **spec_keys, "blocks": [
        {"name": "b", "type": "dbt_command", "command": command}]})
    return check_dbt_command_blocks(load_settings(project), spec, target=spec_keys.get("target"))


@pytest.mark.parametrize("command", [
    "run --select tag:daily --threads 2", "build --full-refresh", "test --select stg_orders", "seed",
    "snapshot", "source freshness", "run-operation announce --args '{a: 1}'", "retry", "docs generate --no-compile",
    "compile --select stg_orders", "show --select stg_orders --limit 3", "dbt run --select {{ vars.x }}",
    "run --threads {{ vars.threads }}", "run --vars '{day: \"{{ execution_date }}\"}'",
])
def test_supported_commands_pass_the_preflight(demo_project, command):
    assert len(_check(demo_project, command)) == 1


@pytest.mark.parametrize("command, message", [
    ("deps", "dbt command 'deps' cannot run as a block"),
    ("parse", "dbt command 'parse' cannot run as a block"),
    ("run --help", "does not run anything"),
    ("run --threads many", "Invalid value for '--threads'"),
    ("run --selct {{ vars.x }}", "No such option '--selct'"),  # flags are checked even when values wait for run vars
    ("run --select {{ executon_date }}", "undefined value: 'executon_date' is undefined"),
    ("run --select {{ oops", "template error in command"),
    ("test --select 'stg_orders", "No closing quotation"),
    ("run-operation", "Missing argument 'MACRO'"),
    ("run --profiles-dir .", "--profiles-dir is set by mage_dbt: the mage_dbt project's profiles.yml"),
    ("run --log-path x", "--log-path is set by mage_dbt"),
    ("run --target-path x", "--target-path is set by mage_dbt"),
    ("run -t nowhere", "unknown target 'nowhere'"),
    ("run --vars '[1, 2]'", "is not a mapping"),
])
def test_bad_commands_fail_the_preflight_naming_file_and_block(demo_project, command, message):
    from mage_dbt.errors import ConfigError

    write(demo_project, "flows/t.yaml", "{}\n")  # the file errors name
    with pytest.raises(ConfigError) as caught:
        _check(demo_project, command)
    text = caught.value.one_line()
    assert text.startswith("flows/t.yaml: dbt_command block 'b': ") and message in text, text


def test_run_target_owns_target_but_a_block_may_pick_one_when_the_run_sets_none(demo_project):
    from mage_dbt.errors import ConfigError

    assert _check(demo_project, "run -t pg")[0].target == "pg"
    with pytest.raises(ConfigError, match="--target is set by the run"):
        _check(demo_project, "run -t pg", target="duckdb")


def test_dbt_args_put_the_run_first_and_merge_vars(demo_project):
    from mage_dbt.blocks.dbt_command import dbt_args, parse_command
    from mage_dbt.context import make_context
    from mage_dbt.dbt.manifest import DbtProjectRef

    ref = DbtProjectRef(name="demo", project_dir=demo_project, profiles_dir=demo_project,
                        data_dir=demo_project / ".mage_dbt", target="duckdb")
    context = make_context("t", "2024-02-01", full_refresh=True, vars={"region": "eu", "keep": 1})
    command = parse_command("b", "run --select x --vars '{region: nl}' --threads 1", run_target=None)
    args = dbt_args(command, ref, context)
    assert args[:3] == ["run", "--project-dir", str(demo_project)]
    assert args.index("--threads") > args.index("--target")  # the block's flags come after the run's
    vars_ = yaml.safe_load(args[args.index("--vars") + 1])
    assert vars_["region"] == "nl" and vars_["keep"] == 1 and vars_["execution_date"] == "2024-02-01"
    assert args.count("--vars") == 1 and args[-1] == "--full-refresh"
    test = parse_command("b", "test --select x", run_target=None)
    assert "--full-refresh" not in dbt_args(test, ref, context)  # test has no full refresh


def test_the_run_summary_counts_every_dbt_call_of_command_blocks(tmp_path):
    """A pipeline made only of dbt command blocks (no `dbt:` section): the summary's "dbt
    invocations" counts each call they make, as the invocation log records them (issue 13)."""
    from tests.support.block_pipelines import summary
    from tests.support.fixture_projects import copy_fixture

    project = copy_fixture("shop_mixed", tmp_path / "shop")
    write(project, "flows/commands_only.yaml", yaml.safe_dump({
        "description": "dbt command blocks only",
        "blocks": [
            {"name": "load", "type": "dbt_command", "command": "seed"},
            {"name": "build_totals", "type": "dbt_command", "command": "run --select customer_totals large_sales",
             "upstream": ["load"]},
            {"name": "check_totals", "type": "dbt_command", "command": "test --select customer_totals",
             "upstream": ["build_totals"]},
        ],
    }, sort_keys=False))
    result = cli(project, "run", "commands_only", "--execution-date", "2024-01-02")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _, data = summary(project, result.stdout)
    log = invocations(project)  # this copy's only process that called dbt is this run's
    assert [r["command"] for r in log if r["command"] != "parse"] == ["seed", "run", "test"], log
    assert data["dbt_invocations"] == len(log)  # the first block's parse of the project counts too
    assert f"3 blocks: 3 success; dbt invocations: {len(log)}" in result.stdout
