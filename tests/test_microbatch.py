"""Microbatch models run for the run's dates: a run of D writes D's batch, a backfill runs the
range's batches in ONE dbt invocation (a task run per batch), a failed batch is resumed alone, and
a mixed pipeline (microbatch -> ordinary incremental) ends with the tables of day-by-day plain dbt.

On DuckDB and PostgreSQL (the demo's fct_payments_daily, one batch per day of paid_date).
"""

from __future__ import annotations

import json
import subprocess
from datetime import date, timedelta

import pytest

from tests.conftest import BIN, cli
from tests.support.dbt_changes import invocations
from tests.support.refresh import error_line, make_backend, ok
from tests.support.runs import checksum, flow_run_id, task_runs

PIPELINE = "payments"
MODEL = "fct_payments_daily"
DOWNSTREAM = "fct_payment_totals_daily"
PIPELINE_YAML = f"""\
description: microbatch tests - payments per day and method, and an ordinary incremental model on top
dbt:
  project: demo
  select: ["+{MODEL}", "{DOWNSTREAM}"]
  exclude: ["test_name:relationships"]   # stg_payments -> stg_orders: not part of this pipeline
  command: build
"""
# An ordinary (delete+insert) incremental model that reads the microbatch model for the run's date.
DOWNSTREAM_SQL = """\
{{ config(materialized='incremental', incremental_strategy='delete+insert', unique_key='paid_date') }}
select paid_date, sum(payments) as payments, cast(sum(amount) as numeric(12, 2)) as amount,
       count(*) as methods
from {{ ref('fct_payments_daily') }}
where paid_date = {{ execution_date() }}
group by paid_date
"""
# Batches of days listed in mb_breaks (flag 'boom') fail at run time: a cast of 'boom' to integer.
BREAKABLE_FILTER = (
    "from {{ ref('stg_payments') }}\n",
    # No alias on the ref: dbt renders it as an aliased event-time subquery (Postgres refuses a second alias).
    "from {{ ref('stg_payments') }}\n"
    "left join {{ target.schema }}.mb_breaks as b on b.day = cast(paid_at as date)\n"
    "where cast(coalesce(b.flag, '0') as integer) = 0\n",
)


def _setup(project, backend_name, pg_env):
    (project / "flows" / f"{PIPELINE}.yaml").write_text(PIPELINE_YAML)
    (project / "dbt_projects" / "demo" / "models" / "marts" / f"{DOWNSTREAM}.sql").write_text(DOWNSTREAM_SQL)
    return make_backend(backend_name, project, pg_env)


def _days(first: str, n: int) -> list[str]:
    start = date.fromisoformat(first)
    return [(start + timedelta(days=i)).isoformat() for i in range(n)]


def _expected_payments(days: list[str]) -> list[tuple]:
    """(day, method, payments) from the demo's seed, the way fct_payments_daily aggregates it."""
    import pandas as pd

    from tests.conftest import REPO

    raw = pd.read_csv(REPO / "dbt_projects" / "demo" / "seeds" / "raw_payments.csv")
    raw["day"] = raw["paid_at"].str[:10]
    raw["method"] = raw["payment_method"].str.lower()
    counts = raw[raw["day"].isin(days)].groupby(["day", "method"]).size()
    return sorted((d, m, int(n)) for (d, m), n in counts.items())


def _table(backend, table: str = MODEL) -> list[tuple]:
    rows = backend.query(f"select cast(paid_date as varchar), payment_method, payments from {{schema}}.{table}")
    return sorted((str(d)[:10], m, int(n)) for d, m, n in rows)


def _batch_runs(flow_run: str) -> dict[str, object]:
    return {name: run for name, run in task_runs(flow_run, batches=True).items() if name.startswith(f"{MODEL} batch ")}


def _window_invocations(project) -> list[dict]:
    return [i for i in invocations(project) if i.get("event_time")]


def _plain_dbt_day_by_day(backend, days: list[str]) -> None:
    """The reference: plain `dbt build`, one invocation per day with that day's vars and window."""
    calls = []
    for day in days:
        end = (date.fromisoformat(day) + timedelta(days=1)).isoformat()
        calls.append(["build", "--select", f"+{MODEL}", DOWNSTREAM, "--exclude", "test_name:relationships", "--vars", json.dumps({"execution_date": day}),
                      "--event-time-start", day, "--event-time-end", end,
                      "--project-dir", str(backend.project / "dbt_projects" / "demo"),
                      "--profiles-dir", str(backend.project), *backend.flags])
    script = ("import json, sys\nfrom dbt.cli.main import dbtRunner\n"
              "for args in json.loads(sys.argv[1]):\n"
              "    if not dbtRunner().invoke(args).success: sys.exit(f'dbt failed: {args}')\n")
    env = {**backend.env, "MAGE_DBT_DATA_DIR": str(backend.project / ".mage_dbt"), "DO_NOT_TRACK": "1"}
    import os

    result = subprocess.run([str(BIN / "python"), "-c", script, json.dumps(calls)], cwd=backend.project,
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("backend_name", ["duckdb", "pg"])
def test_a_run_for_a_past_date_writes_exactly_that_days_batch(demo_project, backend_name, request):
    backend = _setup(demo_project, backend_name, request.getfixturevalue("pg_env") if backend_name == "pg" else None)
    result = backend.cli("run", PIPELINE, "--execution-date", "2024-02-01")
    ok(result)
    assert _table(backend) == _expected_payments(["2024-02-01"])  # not today's batches: 2024-02-01 only
    windows = [i["event_time"] for i in _window_invocations(demo_project)]
    assert windows == [["2024-02-01T00:00:00", "2024-02-02T00:00:00"]]
    runs = task_runs(flow_run_id(result.stdout))
    batches = _batch_runs(flow_run_id(result.stdout))
    assert list(batches) == [f"{MODEL} batch 2024-02-01"]
    batch = batches[f"{MODEL} batch 2024-02-01"]
    assert batch.state.type.value == "COMPLETED"
    assert [p.id for p in batch.task_inputs["__parents__"]] == [runs[MODEL].id]  # drawn inside the model's run
    assert runs[MODEL].state.type.value == "COMPLETED"


@pytest.mark.parametrize("backend_name", ["duckdb", "pg"])
def test_backfill_is_one_invocation_and_equals_day_by_day_dbt(demo_project, backend_name, request):
    backend = _setup(demo_project, backend_name, request.getfixturevalue("pg_env") if backend_name == "pg" else None)
    days = _days("2024-02-01", 10)
    result = backend.cli("backfill", PIPELINE, "--start", days[0], "--end", days[-1])
    ok(result)
    windows = [i["event_time"] for i in _window_invocations(demo_project)]
    assert windows == [["2024-02-01T00:00:00", "2024-02-11T00:00:00"]]  # ONE invocation over the range
    builds = [i for i in invocations(demo_project) if i["command"] == "build"]
    assert len(builds) == 1 + len(days)  # the phase, then the downstream model once per interval
    # dbt_executor: auto: on Postgres the builds ran in the dbt worker process, not in the CLI process
    # that compiled for the drift check; on DuckDB (one process per database file) all in the CLI's.
    compiled = {i["pid"] for i in invocations(demo_project) if i["command"] == "compile"}
    assert len(compiled) == 1, invocations(demo_project)
    assert ({b["pid"] for b in builds} == compiled) == (backend_name == "duckdb"), invocations(demo_project)
    backfill_id = result.stdout.split("backfill ", 1)[1].split(":", 1)[0].strip()
    phase_line = [line for line in result.stdout.splitlines() if "microbatch phase 2024-02-01..2024-02-10" in line]
    assert len(phase_line) == 1 and phase_line[0].split()[0] == "completed", result.stdout[-3000:]  # the live display
    shown = cli(demo_project, "backfills", backfill_id, env=backend.env)
    ok(shown)
    assert "10 batches" in shown.stdout and shown.stdout.count(f"{MODEL} batch 2024-02-") == 10
    microbatch = _table(backend)
    assert microbatch == _expected_payments(days)
    totals = backend.table_checksum(DOWNSTREAM)
    assert len(backend.query(f"select * from {{schema}}.{DOWNSTREAM}")) == len(
        {d for d, _, _ in _expected_payments(days)})

    backend.execute(f"drop table {{schema}}.{MODEL}")
    backend.execute(f"drop table {{schema}}.{DOWNSTREAM}")
    _plain_dbt_day_by_day(backend, days)
    assert _table(backend) == microbatch
    assert backend.table_checksum(DOWNSTREAM) == totals


@pytest.mark.parametrize("backend_name", ["duckdb", "pg"])
def test_failed_batch_fails_alone_and_resume_reruns_only_it(demo_project, backend_name, request):
    """On Postgres the backfill's dbt runs in the dbt worker process (dbt_executor: auto)."""
    backend = _setup(demo_project, backend_name, request.getfixturevalue("pg_env") if backend_name == "pg" else None)
    model = demo_project / "dbt_projects" / "demo" / "models" / "marts" / f"{MODEL}.sql"
    model.write_text(model.read_text().replace(*BREAKABLE_FILTER))
    (demo_project / ".mage_dbt").mkdir(exist_ok=True)
    if backend_name == "pg":
        backend.execute("create schema if not exists {schema}")
    backend.execute("create table {schema}.mb_breaks (day date, flag varchar)")
    backend.execute("insert into {schema}.mb_breaks values ('2024-02-05', 'boom')")
    days = _days("2024-02-01", 10)

    failed = backend.cli("backfill", PIPELINE, "--start", days[0], "--end", days[-1])
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    backfill_id = failed.stdout.split("backfill ", 1)[1].split(":", 1)[0].strip()
    assert _table(backend) == _expected_payments([d for d in days if d != "2024-02-05"])  # the rest is done
    shown = cli(demo_project, "backfills", backfill_id, env=backend.env)
    ok(shown)
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in shown.stdout.splitlines() if f"{MODEL} batch" in line}
    assert rows.pop(f"{MODEL} batch 2024-02-05") == "failed"
    assert set(rows.values()) == {"completed"} and len(rows) == 9

    backend.execute("delete from {schema}.mb_breaks")
    before = len(invocations(demo_project))
    resumed = cli(demo_project, "backfill", "--resume", backfill_id, env=backend.env)  # the plan holds the target
    ok(resumed)
    new = invocations(demo_project)[before:]
    phase = [i for i in new if i.get("event_time")]
    assert len(phase) == 1 and phase[0]["retry_batches"] == 1  # only the failed batch ran again
    assert _table(backend) == _expected_payments(days)
    shown = cli(demo_project, "backfills", backfill_id, env=backend.env)
    assert f"{MODEL} batch 2024-02-05 │ completed │        2" in shown.stdout


def test_a_date_before_the_models_begin_is_refused_before_anything_runs(demo_project):
    backend = _setup(demo_project, "duckdb", None)
    result = backend.cli("run", PIPELINE, "--execution-date", "2023-12-31")
    assert result.returncode == 2
    line = error_line(result)
    assert f"microbatch model '{MODEL}' begins 2024-01-01" in line and "2023-12-31" in line
    assert "flow run:" not in result.stdout
    assert not _window_invocations(demo_project)
    backfill = backend.cli("backfill", PIPELINE, "--start", "2023-12-30", "--end", "2024-01-02")
    assert backfill.returncode == 2 and "begins 2024-01-01" in error_line(backfill)
    assert not (demo_project / ".mage_dbt" / "backfills").exists() or not list(
        (demo_project / ".mage_dbt" / "backfills").glob("*.json"))


def test_an_upstream_without_event_time_is_named_in_a_warning(demo_project):
    backend = _setup(demo_project, "duckdb", None)
    staging = demo_project / "dbt_projects" / "demo" / "models" / "staging" / "_staging.yml"
    text = staging.read_text()
    assert "event_time: paid_at" in text
    staging.write_text(text.replace("      event_time: paid_at", "      enabled: true"))
    result = backend.cli("run", PIPELINE, "--execution-date", "2024-02-01")
    ok(result)
    output = result.stdout + result.stderr
    assert f"microbatch model {MODEL} reads stg_payments, which has no event_time" in output


def test_a_dbt_command_block_with_event_time_flags_on_a_command_that_refuses_them(demo_project):
    backend = _setup(demo_project, "duckdb", None)
    (demo_project / "flows" / "bad_flags.yaml").write_text(
        "blocks:\n  - name: check\n    type: dbt_command\n"
        "    command: test --event-time-start 2024-02-01 --event-time-end 2024-02-02\n")
    result = backend.cli("run", "bad_flags", "--execution-date", "2024-02-01")
    assert result.returncode == 2
    line = error_line(result)
    assert "dbt_command block 'check'" in line and "--event-time-start" in line
    assert "flow run:" not in result.stdout


def test_overlapping_backfills_of_one_microbatch_model_are_refused(demo_project):
    import fcntl
    import os

    backend = _setup(demo_project, "duckdb", None)
    first = backend.cli("backfill", PIPELINE, "--start", "2024-02-01", "--end", "2024-02-02")
    ok(first)
    backfill_id = first.stdout.split("backfill ", 1)[1].split(":", 1)[0].strip()
    lock = demo_project / ".mage_dbt" / "backfills" / f"{backfill_id}.lock"
    fd = os.open(lock, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what the process of a running backfill holds
    try:
        records = sorted((demo_project / ".mage_dbt" / "backfills").glob("*.json"))
        refused = backend.cli("backfill", PIPELINE, "--start", "2024-02-02", "--end", "2024-02-04")
        assert refused.returncode == 2
        line = error_line(refused)
        assert backfill_id in line and MODEL in line
        assert sorted((demo_project / ".mage_dbt" / "backfills").glob("*.json")) == records  # nothing recorded
        apart = backend.cli("backfill", PIPELINE, "--start", "2024-02-03", "--end", "2024-02-04")
        ok(apart)  # a range that does not overlap runs
    finally:
        os.close(fd)


def test_rebuild_of_a_microbatch_model_is_one_full_refresh_invocation_over_the_range(demo_project):
    backend = _setup(demo_project, "duckdb", None)
    days = _days("2024-02-01", 5)
    ok(backend.cli("run", PIPELINE, "--execution-date", "2024-02-03"))
    backend.execute(f"insert into {{schema}}.{MODEL} values ('2023-06-01', 'stale', 9, 9.00)")  # gone after a full refresh
    before = len(invocations(demo_project))
    result = backend.cli("rebuild", PIPELINE, "--select", MODEL, "--start", days[0], "--end", days[-1])
    ok(result)
    new = invocations(demo_project)[before:]
    assert [i["event_time"] for i in new if i.get("event_time")] == [["2024-02-01T00:00:00", "2024-02-06T00:00:00"]]
    assert len([i for i in new if i["command"] == "build"]) == 1  # no per-date runs after it
    assert _table(backend) == _expected_payments(days)


def test_retry_reruns_only_the_failed_batches_of_a_run(demo_project):
    backend = _setup(demo_project, "duckdb", None)
    (demo_project / "flows" / f"{PIPELINE}.yaml").write_text(PIPELINE_YAML + "interval: week\n")  # 7 daily batches
    model = demo_project / "dbt_projects" / "demo" / "models" / "marts" / f"{MODEL}.sql"
    model.write_text(model.read_text().replace(*BREAKABLE_FILTER))
    (demo_project / ".mage_dbt").mkdir(exist_ok=True)
    backend.execute("create table {schema}.mb_breaks (day date, flag varchar)")
    backend.execute("insert into {schema}.mb_breaks values ('2024-02-07', 'boom')")
    week = _days("2024-02-05", 7)  # Monday 2024-02-05 .. Sunday 2024-02-11

    failed = backend.cli("run", PIPELINE, "--execution-date", week[0])
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    assert "1 of 7 batches failed: 2024-02-07" in failed.stdout + failed.stderr
    assert "cast" in (failed.stdout + failed.stderr).lower() or "conversion" in (failed.stdout + failed.stderr).lower()
    assert _table(backend) == _expected_payments([d for d in week if d != "2024-02-07"])
    batches = _batch_runs(flow_run_id(failed.stdout))
    assert batches[f"{MODEL} batch 2024-02-07"].state.type.value == "FAILED"
    assert sum(b.state.type.value == "COMPLETED" for b in batches.values()) == 6

    backend.execute("delete from {schema}.mb_breaks")
    before = len(invocations(demo_project))
    retried = backend.cli("retry", PIPELINE)
    ok(retried)
    phase = [i for i in invocations(demo_project)[before:] if i.get("event_time")]
    assert len(phase) == 1 and phase[0]["retry_batches"] == 1
    assert list(_batch_runs(flow_run_id(retried.stdout))) == [f"{MODEL} batch 2024-02-07"]  # only that batch ran
    assert _table(backend) == _expected_payments(week)


# The batch of 2024-02-07 fails on its first try only (a marker file remembers the try).
FLAKY_BATCH = """
{%- set batch_start = (model.get('batch') or {}).get('event_time_start', '') | string -%}
{%- set fail_now = namespace(value=false) -%}
{%- if execute and batch_start.startswith('2024-02-07') -%}
  {%- set seen = run_query("select count(*) from glob('" ~ var('flaky_marker') ~ "')").columns[0].values()[0] -%}
  {%- if seen == 0 -%}
    {%- do run_query("copy (select 1 as tried) to '" ~ var('flaky_marker') ~ "' (format csv)") -%}
    {%- set fail_now.value = true -%}
  {%- endif -%}
{%- endif %}
"""


def test_a_same_run_retry_of_a_microbatch_model_reruns_only_its_failed_batch(demo_project):
    backend = _setup(demo_project, "duckdb", None)
    marker = demo_project / ".mage_dbt" / "flaky_batch.csv"
    (demo_project / ".mage_dbt").mkdir(exist_ok=True)
    (demo_project / "flows" / f"{PIPELINE}.yaml").write_text(
        PIPELINE_YAML.replace("  command: build\n", f"  command: build\n  policies: [{{select: {MODEL}, retries: 1}}]\n")
        + f"interval: week\nvars: {{flaky_marker: '{marker}'}}\n")
    model = demo_project / "dbt_projects" / "demo" / "models" / "marts" / f"{MODEL}.sql"
    model.write_text(model.read_text().replace("\nselect\n", FLAKY_BATCH + "\nselect\n").replace(
        "from {{ ref('stg_payments') }}\n",
        "from {{ ref('stg_payments') }}\nwhere {{ \"cast('boom' as integer) = 0\" if fail_now.value else 'true' }}\n"))
    week = _days("2024-02-05", 7)

    before = len(invocations(demo_project))
    result = backend.cli("run", PIPELINE, "--execution-date", week[0])
    ok(result)
    assert marker.exists()  # the batch did fail once
    rounds = [i for i in invocations(demo_project)[before:] if i.get("event_time")]
    assert [r["retry_batches"] for r in rounds] == [0, 1]  # the retry ran the one failed batch, not the week
    assert _table(backend) == _expected_payments(week)
    batches = _batch_runs(flow_run_id(result.stdout))
    assert len(batches) == 7 and {b.state.type.value for b in batches.values()} == {"COMPLETED"}, batches
