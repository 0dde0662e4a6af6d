"""Runs know their code: the demo pipeline from a git-synced copy of its dbt project, the commit on
every run (flow run tag and log line), one-off runs against another ref, sync_on_run, and the
manifest cache keyed by commit. Real git remotes, real dbt, the session's real Prefect server."""

from __future__ import annotations

import json
import os
import shutil

from tests.conftest import cli
from tests.gitsync_fixtures import *  # noqa: F401,F403 - git_home and friends
from tests.support.runs import duckdb_rows, flow_run, flow_run_id
from tests.support.synced_project import (
    BROKEN, TINY, configure, current_commit, flow_run_logs, invocations, one_line_error, push_project,
    write_pipeline,
)


def test_demo_runs_from_a_synced_copy_and_a_broken_push_keeps_the_previous_revision(
    demo_project, tmp_path, git_home
) -> None:
    dbt_dir = demo_project / "dbt_projects" / "demo"
    remote = push_project(tmp_path / "remotes", "demo", source=dbt_dir)
    shutil.rmtree(dbt_dir)  # the demo dbt project now only comes from git
    configure(demo_project, {"name": "demo", "url": remote.path})
    first = remote.sha()

    synced = cli(demo_project, "sync")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert f"demo: main none → {first[:12]} (changed; dbt deps not needed)" in synced.stdout
    assert os.readlink(dbt_dir) == f".git_sync/demo/revisions/{first}" and current_commit(demo_project, "demo") == first
    assert invocations(demo_project, "parse") == 1  # the sync's validation parsed it, keyed by commit

    run = cli(demo_project, "run", "demo", "--execution-date", "2024-02-01")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    run_id = flow_run_id(run.stdout)
    record = flow_run(run_id)
    assert record.state.type.value == "COMPLETED"
    assert f"dbt-commit:{first[:12]}" in record.tags and record.parameters["ref"] is None
    assert f"dbt project demo at commit {first}" in flow_run_logs(run_id)
    assert duckdb_rows(demo_project, "select count(*) from main.fct_daily_revenue") == [(1,)]
    assert invocations(demo_project, "parse") == 1  # the validation parse traced the run dates: it serves every date

    remote.commit("a model that does not parse", BROKEN)
    remote.push("main")
    failed = cli(demo_project, "sync")
    line = one_line_error(failed)
    assert "of 'demo' failed validation" in line and "does_not_exist" in line
    assert "the current revision stays in use" in line
    assert current_commit(demo_project, "demo") == first
    assert os.listdir(demo_project / "dbt_projects" / ".git_sync" / "demo" / "revisions") == [first]
    parsed = invocations(demo_project, "parse")  # the rejected revision's (a failed traced parse is retried pinned)

    again = cli(demo_project, "run", "demo", "--execution-date", "2024-02-01")  # the same commit again
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"dbt-commit:{first[:12]}" in flow_run(flow_run_id(again.stdout)).tags
    assert invocations(demo_project, "parse") == parsed  # the kept revision's manifest comes from the cache
    assert invocations(demo_project, "build") == 2


def _version(project) -> str:
    return duckdb_rows(project, "select version from main.git_marker")[0][0]


def test_run_ref_is_a_one_off_and_sync_on_run_picks_up_new_commits(demo_project, tmp_path, git_home) -> None:
    remote = push_project(tmp_path / "remotes", "tiny", files=TINY)
    main = remote.sha()
    remote.switch("fix-branch")
    fix = remote.commit("hotfix", {"models/git_marker.sql": "select 'fix' as version\n"})
    remote.push("fix-branch")
    remote.tag("v1.0", main)
    remote.switch("main", main)
    configure(demo_project, {"name": "tiny", "url": remote.path})
    write_pipeline(demo_project, "marker", "tiny", ["git_marker"])
    assert cli(demo_project, "sync", "tiny").returncode == 0

    once = cli(demo_project, "run", "marker", "-d", "2024-02-01", "--ref", "fix-branch")
    assert once.returncode == 0, once.stdout[-3000:] + once.stderr[-3000:]
    assert _version(demo_project) == "fix"
    record = flow_run(flow_run_id(once.stdout))
    assert record.parameters["ref"] == "fix-branch"
    assert {f"dbt-commit:{fix[:12]}", "dbt-ref:fix-branch"} <= set(record.tags)
    assert current_commit(demo_project, "tiny") == main  # the configured revision did not move
    state = json.loads((demo_project / "dbt_projects/.git_sync/tiny/state.json").read_text())
    assert (state["current"], state["ref"]) == (main, "main")

    tagged = cli(demo_project, "run", "marker", "-d", "2024-02-01", "--ref", "v1.0")
    assert tagged.returncode == 0 and _version(demo_project) == "v1"
    assert f"dbt-commit:{main[:12]}" in flow_run(flow_run_id(tagged.stdout)).tags

    missing = one_line_error(cli(demo_project, "run", "marker", "-d", "2024-02-01", "--ref", "no-such-branch"))
    assert "fatal: couldn't find remote ref no-such-branch" in missing
    assert current_commit(demo_project, "tiny") == main

    write_pipeline(demo_project, "marker", "tiny", ["git_marker"], sync_on_run=True)
    second = remote.commit("v2", {"models/git_marker.sql": "select 'v2' as version\n"})
    remote.push("main")
    synced_run = cli(demo_project, "run", "marker", "-d", "2024-02-01")
    assert synced_run.returncode == 0, synced_run.stdout[-3000:] + synced_run.stderr[-3000:]
    assert f"sync_on_run: tiny: main {main[:12]} → {second[:12]} (changed" in synced_run.stdout
    assert _version(demo_project) == "v2" and current_commit(demo_project, "tiny") == second
    assert f"dbt-commit:{second[:12]}" in flow_run(flow_run_id(synced_run.stdout)).tags

    # A push that does not parse: the run goes on with the current revision, says so, and tags it.
    remote.commit("broken", BROKEN)
    remote.push("main")
    kept = cli(demo_project, "run", "marker", "-d", "2024-02-01")
    assert kept.returncode == 0, kept.stdout[-3000:] + kept.stderr[-3000:]
    assert "warning: sync_on_run:" in kept.stderr and "does_not_exist" in kept.stderr
    assert "Traceback" not in kept.stderr
    assert {f"dbt-commit:{second[:12]}", "dbt-sync-failed"} <= set(flow_run(flow_run_id(kept.stdout)).tags)
    assert current_commit(demo_project, "tiny") == second and _version(demo_project) == "v2"


def test_runs_of_a_project_that_is_not_synced(demo_project) -> None:
    """A plain dbt project folder runs untagged and says why; --ref and sync_on_run refuse it."""
    write_pipeline(demo_project, "plain", "demo", ["raw_customers"])
    run = cli(demo_project, "run", "plain", "-d", "2024-02-01")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    run_id = flow_run_id(run.stdout)
    assert not [t for t in flow_run(run_id).tags if t.startswith("dbt-commit:")]
    assert any("dbt project demo" in m and "is not git-synced" in m for m in flow_run_logs(run_id))

    error = one_line_error(cli(demo_project, "run", "plain", "-d", "2024-02-01", "--ref", "main"))
    assert "--ref needs a git-synced dbt project" in error and "destination 'demo'" in error
    write_pipeline(demo_project, "synced", "demo", ["raw_customers"], sync_on_run=True)
    error = one_line_error(cli(demo_project, "run", "synced", "-d", "2024-02-01"))
    assert "sync_on_run needs a git-synced dbt project" in error
