"""Run policies (retries with backoff and jitter, timeouts) from the pipeline file, on real runs.

With the session's real Prefect server: a flaky Python block succeeds on its second try with
run_count 2; a dbt model that fails once is retried alone (with the node it holds up) in the same
flow run while its siblings ran once, as the dbt invocation log shows; a block that sleeps past
`timeout_seconds` ends TimedOut and its downstream Skipped; on Postgres a dbt node past its timeout
has its query cancelled. Unit tests of the resolution (block > dbt selection policy > pipeline).
"""

from __future__ import annotations

import random
import time
from types import SimpleNamespace

import pytest

from mage_dbt.pipelines.run_policies import DEFAULT_POLICY, RunPolicy, merge_policy, resolve_policies
from mage_dbt.pipelines.spec import PipelineSpec
from tests.conftest import cli
from tests.support import postgres
from tests.support.block_pipelines import states, statuses, summary, task_run_logs, write_pipeline
from tests.support.dbt_changes import DEMO, invocations, reset_pg_schemas, write
from tests.support.runs import task_runs

DATE = ("--execution-date", "2024-02-01")


# -- resolution -------------------------------------------------------------------------------------
def _block(name, unique_id=None, spec=None):
    return SimpleNamespace(name=name, unique_id=unique_id, spec=spec)


def test_each_key_comes_from_the_most_specific_level_that_sets_it():
    spec = PipelineSpec.model_validate({
        "name": "p",
        "run_policy": {"retries": 1, "retry_delay_seconds": 5, "timeout_seconds": 600},
        "dbt": {"select": ["*"], "policies": [
            {"select": "tag:flaky", "retries": 3},
            {"select": "tag:slow", "retries": 9, "timeout_seconds": 60},
        ]},
        "blocks": [{"name": "load", "type": "python", "timeout_seconds": 30, "retry_backoff": "exponential"}],
    })
    blocks = {
        "load": _block("load", spec=spec.blocks[0]),
        "flaky_and_slow": _block("flaky_and_slow", "model.x.flaky_and_slow"),
        "plain": _block("plain", "model.x.plain"),
    }
    tags = {"tag:flaky": {"model.x.flaky_and_slow"}, "tag:slow": {"model.x.flaky_and_slow"}}
    policies, unmatched = resolve_policies(spec, blocks, lambda selector: tags[selector])
    assert unmatched == []
    assert policies["load"] == RunPolicy(retries=1, retry_delay_seconds=5, retry_backoff="exponential",
                                         timeout_seconds=30)
    # the first matching selection policy that sets a key wins; timeout from the second one
    assert policies["flaky_and_slow"] == RunPolicy(retries=3, retry_delay_seconds=5, timeout_seconds=60)
    assert policies["plain"] == RunPolicy(retries=1, retry_delay_seconds=5, timeout_seconds=600)


def test_a_selection_policy_that_picks_no_block_is_reported_and_no_policy_means_the_default():
    spec = PipelineSpec.model_validate({"name": "p", "dbt": {"select": ["*"], "policies": [
        {"select": "tag:nothing", "retries": 2}, {"select": "tag:some", "retries": 1}]}})
    blocks = {"a": _block("a", "model.x.a"), "b": _block("b", "model.x.b")}
    chosen = {"tag:nothing": set(), "tag:some": {"model.x.a"}}
    policies, unmatched = resolve_policies(spec, blocks, chosen.__getitem__)
    assert unmatched == [0]
    assert policies == {"a": RunPolicy(retries=1)}  # b keeps the default: it is not listed
    assert merge_policy([{}, {}]) == DEFAULT_POLICY


def test_retry_delays_constant_exponential_and_jitter():
    assert [RunPolicy(retries=3, retry_delay_seconds=2).delay(t) for t in (1, 2, 3)] == [2, 2, 2]
    exponential = RunPolicy(retries=3, retry_delay_seconds=2, retry_backoff="exponential")
    assert [exponential.delay(t) for t in (1, 2, 3)] == [2, 4, 8]
    jittered = RunPolicy(retries=3, retry_delay_seconds=10, retry_jitter_factor=0.5)
    delays = [jittered.delay(1, random.Random(seed)) for seed in range(50)]
    assert all(5 <= d <= 15 for d in delays) and len(set(delays)) > 40


def test_time_limits_stop_the_main_thread_only_for_a_deadline_still_armed():
    from mage_dbt.runs.interrupts import TimeLimitExceeded, time_limits

    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        with time_limits() as limits:
            limits.arm("slow", 0.3)
            limits.arm("later", 30)
            time.sleep(20)  # the work being stopped, not a wait for something
    assert limits.expired == {"slow": 0.3} and time.monotonic() - started < 10
    with time_limits() as limits:
        limits.arm("done", 0.2)
        limits.disarm("done")
        time.sleep(0.5)
    assert limits.expired == {}


# -- Python blocks ----------------------------------------------------------------------------------
FLAKY = """
    from pathlib import Path

    from mage_dbt import data_loader


    @data_loader
    def flaky(*, data_dir, **kwargs):
        counter = Path(data_dir) / "flaky_tries"
        tries = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(tries))
        if tries == 1:
            raise RuntimeError("first try fails")
        return {"tries": tries}
    """
SLEEPY = """
    import time

    from mage_dbt import data_loader


    @data_loader
    def sleepy(**kwargs):
        time.sleep(60)
        return 1
    """
AFTER = """
    from mage_dbt import transformer


    @transformer
    def after(value, **kwargs):
        return value
    """


def _task_run_states(task_run_id) -> list[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [s.name for s in client.read_task_run_states(task_run_id)]


def test_a_flaky_python_block_succeeds_on_its_second_try_with_run_count_2(demo_project):
    write_pipeline(demo_project, "flaky", {
        "blocks": [{"name": "flaky", "type": "python", "file": "flows/flaky/flaky.py",
                    "retries": 2, "retry_delay_seconds": 0.2}],
    }, {"flows/flaky/flaky.py": FLAKY})
    result = cli(demo_project, "run", "flaky", *DATE)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_id, data = summary(demo_project, result.stdout)
    assert data["results"]["flaky"]["status"] == "success" and data["results"]["flaky"]["tries"] == 2
    assert (demo_project / ".mage_dbt" / "flaky_tries").read_text() == "2"  # no third try

    run = task_runs(run_id)["flaky"]
    assert (run.state.type.value, run.state.name, run.run_count) == ("COMPLETED", "Completed", 2)
    assert run.empirical_policy.retries == 2
    history = _task_run_states(run.id)
    assert history[-2:] == ["AwaitingRetry", "Completed"] or history[-3:] == ["AwaitingRetry", "Retrying", "Completed"]
    assert any("try 1 of 3 failed: first try fails" in m for m in task_run_logs(run.id))


def test_a_block_past_its_timeout_ends_timed_out_and_its_downstream_skipped(demo_project):
    write_pipeline(demo_project, "sleepy", {
        "blocks": [
            {"name": "sleepy", "type": "python", "file": "flows/sleepy/sleepy.py", "timeout_seconds": 2},
            {"name": "after", "type": "python", "file": "flows/sleepy/after.py", "upstream": ["sleepy"]},
        ],
    }, {"flows/sleepy/sleepy.py": SLEEPY, "flows/sleepy/after.py": AFTER})
    started = time.monotonic()
    result = cli(demo_project, "run", "sleepy", *DATE)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert elapsed < 45, elapsed  # stopped at 2 s, not after the block's 60 s sleep
    run_id, data = summary(demo_project, result.stdout)
    assert statuses(data) == {"sleepy": "failed", "after": "skipped"}
    assert data["results"]["sleepy"]["timed_out"] is True
    assert 1.5 < data["results"]["sleepy"]["seconds"] < 20
    assert "timeout_seconds (2s)" in data["results"]["sleepy"]["message"]
    assert states(task_runs(run_id)) == {"sleepy": ("FAILED", "TimedOut"), "after": ("CANCELLED", "Skipped")}


def test_a_timed_out_try_is_retried_when_retries_are_left(demo_project):
    once_slow = """
        import time
        from pathlib import Path

        from mage_dbt import data_loader


        @data_loader
        def once_slow(*, data_dir, **kwargs):
            marker = Path(data_dir) / "slow_once"
            if not marker.exists():
                marker.write_text("slept")
                time.sleep(60)
            return 1
        """
    write_pipeline(demo_project, "slow_once", {
        "run_policy": {"retries": 1, "timeout_seconds": 8},  # room for loading the block on a busy machine
        "blocks": [{"name": "once_slow", "type": "python", "file": "flows/slow_once/once_slow.py"}],
    }, {"flows/slow_once/once_slow.py": once_slow})
    result = cli(demo_project, "run", "slow_once", *DATE)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_id, data = summary(demo_project, result.stdout)
    assert (data["results"]["once_slow"]["status"], data["results"]["once_slow"]["tries"]) == ("success", 2)
    run = task_runs(run_id)["once_slow"]
    assert (run.state.name, run.run_count) == ("Completed", 2)


# -- dbt nodes --------------------------------------------------------------------------------------
# Fails the first time dbt compiles it (no marker file yet: the SQL casts 'x' to an integer) and
# writes the marker while compiling, so the next invocation compiles the valid SQL.
FLAKY_MODEL = """{{ config(tags=['flaky']) }}
{% set marker = var('flaky_marker') %}
{% if execute %}
  {% set seen = run_query("select count(*) from glob('" ~ marker ~ "')").columns[0].values()[0] %}
  {% if seen == 0 %}{% do run_query("copy (select 1 as tried) to '" ~ marker ~ "' (format csv)") %}{% endif %}
{% else %}{% set seen = 1 %}{% endif %}
select order_id, {{ "cast('x' as integer)" if seen == 0 else "1" }} as value
from {{ ref('stg_orders') }}
"""


def test_a_dbt_model_that_fails_once_is_retried_alone_in_the_same_flow_run(demo_project):
    marker = demo_project / ".mage_dbt" / "flaky_marker.csv"
    write(demo_project, f"{DEMO}/models/marts/flaky_once.sql", FLAKY_MODEL)
    write(demo_project, f"{DEMO}/models/marts/after_flaky.sql", "select * from {{ ref('flaky_once') }}\n")
    write_pipeline(demo_project, "flakydbt", {
        "dbt": {"select": ["+flaky_once+", "+stg_customers", "+stg_payments"],
                "policies": [{"select": "tag:flaky", "retries": 1}]},
        "vars": {"flaky_marker": str(marker)},
    })
    before = len(invocations(demo_project))
    result = cli(demo_project, "run", "flakydbt", *DATE)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_id, data = summary(demo_project, result.stdout)
    assert marker.exists()
    assert set(statuses(data).values()) == {"success"}
    tries = {name: r["tries"] for name, r in data["results"].items()}
    assert tries.pop("flaky_once") == 2
    assert {n: t for n, t in tries.items() if t != 1} == {}  # after_flaky waited and ran once; siblings once

    runs = task_runs(run_id)
    assert (runs["flaky_once"].state.name, runs["flaky_once"].run_count) == ("Completed", 2)
    assert "AwaitingRetry" in _task_run_states(runs["flaky_once"].id)
    assert {n: r.run_count for n, r in runs.items() if n != "flaky_once"} == {n: 1 for n in runs if n != "flaky_once"}

    # The dbt invocation log: one build of the whole group, then one of exactly the failed model and
    # the model it held up -- never a node that had succeeded.
    builds = [r for r in invocations(demo_project)[before:] if r["command"] == "build"]
    assert [(r["nodes"], r["success"]) for r in builds] == [(len(data["results"]), False), (2, True)], builds
    assert data["dbt_invocations"] == 2


def test_a_dbt_model_that_keeps_failing_is_tried_as_often_as_its_policy_says(demo_project):
    write(demo_project, f"{DEMO}/models/marts/always_broken.sql",
          "select cast('x' as integer) as value from {{ ref('stg_orders') }}\n")
    write(demo_project, f"{DEMO}/models/marts/after_broken.sql", "select * from {{ ref('always_broken') }}\n")
    write_pipeline(demo_project, "broken", {
        "dbt": {"select": ["+always_broken+"], "exclude": ["test_name:relationships"]},
        "run_policy": {"retries": 2, "retry_delay_seconds": 0.1, "retry_backoff": "exponential"},
    })
    before = len(invocations(demo_project))
    result = cli(demo_project, "run", "broken", *DATE)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    run_id, data = summary(demo_project, result.stdout)
    assert data["results"]["always_broken"]["status"] == "failed"
    assert data["results"]["always_broken"]["tries"] == 3
    assert data["results"]["after_broken"]["status"] == "skipped"
    builds = [r["nodes"] for r in invocations(demo_project)[before:] if r["command"] == "build"]
    not_ok = {n: (r["status"], r["tries"]) for n, r in data["results"].items() if r["status"] != "success"}
    assert builds == [len(data["results"]), 2, 2], (builds, not_ok)
    runs = task_runs(run_id)
    assert (runs["always_broken"].state.type.value, runs["always_broken"].run_count) == ("FAILED", 3)
    assert runs["after_broken"].state.name == "Skipped"


SLOW_MODEL = """{{ config(tags=['slow']) }}
select order_id, pg_sleep(60) is null as slept from {{ ref('stg_orders') }} limit 1
"""


def test_a_dbt_node_past_its_timeout_is_cancelled_on_postgres(demo_project, pg_env):
    reset_pg_schemas(pg_env)
    write(demo_project, f"{DEMO}/models/marts/slow_model.sql", SLOW_MODEL)
    write(demo_project, f"{DEMO}/models/marts/after_slow.sql", "select * from {{ ref('slow_model') }}\n")
    write_pipeline(demo_project, "slow", {
        "dbt": {"select": ["+slow_model+", "+stg_customers"],
                "policies": [{"select": "tag:slow", "timeout_seconds": 3}]},
    })
    started = time.monotonic()
    result = cli(demo_project, "run", "slow", "--target", "pg", *DATE, env=pg_env)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert elapsed < 50, elapsed  # not the model's 60 s
    run_id, data = summary(demo_project, result.stdout)
    assert (data["results"]["slow_model"]["status"], data["results"]["slow_model"]["timed_out"]) == ("failed", True)
    assert data["results"]["after_slow"]["status"] == "skipped"
    assert data["results"]["stg_customers"]["status"] == "success"
    got = states(task_runs(run_id))
    assert got["slow_model"] == ("FAILED", "TimedOut") and got["after_slow"] == ("CANCELLED", "Skipped")
    # The query was cancelled and the connection closed: nothing of ours is left in Postgres.
    left = postgres.query(pg_env, "select count(*) from pg_stat_activity where query ilike '%pg_sleep(60)%' "
                                  "and pid <> pg_backend_pid()")
    assert left == [(0,)]
    assert not postgres.query(pg_env, "select 1 from information_schema.tables where table_name = 'slow_model'")
