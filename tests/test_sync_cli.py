"""`mage-dbt sync` and the `mage-dbt-sync` Prefect flow with the real dbt checks: `dbt deps` only when
package files change, one-line failures that leave the previous revision current, local edits, a
deployment run by Prefect's engine, and a canary token that must never appear anywhere."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.conftest import cli
from tests.gitsync_fixtures import *  # noqa: F401,F403 - git_home, git_http_server, http_token
from tests.support.runs import flow_run, flow_run_id
from tests.support.synced_project import (
    BROKEN, TINY, configure, current_commit, flow_run_logs, invocations, one_line_error, push_project,
    write_pipeline,
)

HELPERS = {
    "dbt_project.yml": "name: helpers\nversion: '1.0'\nconfig-version: 2\n",
    "macros/hello.sql": "{% macro hello() %}'hello'{% endmacro %}\n",
}


def test_dbt_deps_runs_only_when_package_files_change(demo_project, tmp_path, git_home) -> None:
    helpers = push_project(tmp_path / "remotes", "helpers", files=HELPERS)  # a dbt git package, offline
    packages = f'packages:\n  - git: "{helpers.path}"\n    revision: main\n'
    remote = push_project(tmp_path / "remotes", "tiny", files={
        **TINY, "packages.yml": packages, "models/git_marker.sql": "select {{ hello() }} as version\n",
    })
    configure(demo_project, {"name": "tiny", "url": remote.path})
    link = demo_project / "dbt_projects" / "tiny"

    first = cli(demo_project, "sync")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "(changed; dbt deps ran)" in first.stdout and invocations(demo_project, "deps") == 1
    assert (link / "dbt_packages" / "helpers" / "macros" / "hello.sql").is_file()

    remote.commit("a model, no package change", {"models/other.sql": "select 2 as id\n"})
    remote.push("main")
    second = cli(demo_project, "sync")
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"→ {remote.sha()[:12]} (changed; dbt deps not needed)" in second.stdout
    assert invocations(demo_project, "deps") == 1
    assert invocations(demo_project, "parse") == 2  # it parsed (hello() resolved): packages were carried over

    helpers.commit("a second macro", {"macros/bye.sql": "{% macro bye() %}'bye'{% endmacro %}\n"})
    helpers.push("main")
    helpers.tag("v2")
    remote.commit("pin helpers v2", {"packages.yml": packages.replace("revision: main", "revision: v2")})
    remote.push("main")
    third = cli(demo_project, "sync")
    assert third.returncode == 0, third.stdout + third.stderr
    assert "(changed; dbt deps ran)" in third.stdout and invocations(demo_project, "deps") == 2
    assert (link / "dbt_packages" / "helpers" / "macros" / "bye.sql").is_file()


def test_sync_refuses_bad_input_and_local_edits_and_reports_each_repository(demo_project, tmp_path, git_home):
    one = push_project(tmp_path / "remotes", "one", files=TINY)
    two = push_project(tmp_path / "remotes", "two", files=TINY)
    configure(demo_project, {"name": "one", "url": one.path}, {"name": "two", "url": two.path})

    assert "no git sync repository named 'nope' (known: one, two)" in one_line_error(cli(demo_project, "sync", "nope"))
    assert "--ref needs the repository NAME" in one_line_error(cli(demo_project, "sync", "--ref", "main"))
    assert not (demo_project / "dbt_projects" / ".git_sync").exists()  # nothing was touched

    both = cli(demo_project, "sync")  # no NAME: every configured repository
    assert both.returncode == 0, both.stdout + both.stderr
    assert f"one: main none → {one.sha()[:12]} (changed" in both.stdout
    assert f"two: main none → {two.sha()[:12]} (changed" in both.stdout

    model = demo_project / "dbt_projects" / "one" / "models" / "git_marker.sql"
    model.write_text("select 'edited' as version\n")
    refused = one_line_error(cli(demo_project, "sync", "one"))
    assert "has local edits not in git" in refused and "models/git_marker.sql" in refused
    assert "edited" in model.read_text()
    forced = cli(demo_project, "sync", "one", "--force")
    assert forced.returncode == 0 and "(changed; dbt deps not needed)" in forced.stdout
    assert model.read_text() == "select 'v1' as version\n"

    two.bare.rename(tmp_path / "remotes" / "moved.git")  # the remote of `two` is gone
    partly = cli(demo_project, "sync")
    line = one_line_error(partly)
    assert line.startswith("error: 1 of 2 repositories failed to sync: two: ") and "fatal: " in line
    assert f"one: main {one.sha()[:12]} → {one.sha()[:12]} (unchanged" in partly.stdout
    assert "two: failed: " in partly.stdout
    assert current_commit(demo_project, "two") == two.sha()


def test_sync_flow_runs_as_a_prefect_deployment(demo_project, tmp_path, git_home) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments.runner import EntrypointType

    from mage_dbt.sync_flow import SYNC_FLOW_NAME, sync_flow

    remote = push_project(tmp_path / "remotes", "tiny", files=TINY)
    configure(demo_project, {"name": "tiny", "url": remote.path})
    name = f"sync-test-{uuid.uuid4().hex[:8]}"
    deployment_id = sync_flow.to_deployment(
        name=name, parameters={"name": "tiny"}, entrypoint_type=EntrypointType.MODULE_PATH,
    ).apply()

    def execute(**parameters):
        """Create a flow run of the deployment and execute it the way a Prefect worker does."""
        with get_client(sync_client=True) as client:
            created = client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
        env = {**os.environ, "MAGE_DBT_PROJECT_DIR": str(demo_project)}
        subprocess.run([sys.executable, "-m", "prefect.engine", str(created.id)], cwd=demo_project, env=env,
                       capture_output=True, text=True, timeout=300, check=False)
        return flow_run(str(created.id))

    try:
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(f"{SYNC_FLOW_NAME}/{name}")
        assert deployment.entrypoint == "mage_dbt.sync_flow.sync_flow"
        assert set(deployment.parameter_openapi_schema["properties"]) == {"name", "ref", "force"}

        first = execute()
        assert first.state.type.value == "COMPLETED", first.state.message
        assert first.name == "sync-tiny" and current_commit(demo_project, "tiny") == remote.sha()
        assert any(f"tiny: main none → {remote.sha()[:12]}" in m for m in flow_run_logs(str(first.id)))

        good = remote.sha()
        remote.commit("does not parse", BROKEN)
        remote.push("main")
        second = execute(ref="main")
        assert second.state.type.value == "FAILED" and "does_not_exist" in second.state.message
        assert second.name == "sync-tiny@main" and second.parameters == {"name": "tiny", "ref": "main"}
        assert current_commit(demo_project, "tiny") == good
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment_id)


def _files_containing(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for folder, _dirs, files in os.walk(root, followlinks=False):
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink() and path.is_file() and any(n in path.read_bytes() for n in needles):
                found.append(str(path))
    return found


def test_canary_token_never_leaks_through_the_cli(demo_project, tmp_path, git_home, git_http_server, http_token):
    # Traps: a user credential helper that would store the token, and curl tracing into the project.
    (git_home / ".gitconfig").write_text("[credential]\n\thelper = store\n")
    env = {"GIT_TRACE_CURL": str(demo_project / "curl-trace.log"), "GIT_TRACE_REDACT": "0"}
    needles = [http_token.encode(), base64.b64encode(f"x-access-token:{http_token}".encode())]
    remote = push_project(tmp_path / "remotes", "tiny", files=TINY)
    configure(demo_project, {"name": "tiny", "url": git_http_server.url("tiny.git"), "token_env": "GITSYNC_TEST_TOKEN"})
    write_pipeline(demo_project, "marker", "tiny", ["git_marker"], sync_on_run=True)
    outputs = []

    def run(*args: str):
        result = cli(demo_project, *args, env=env)
        outputs.extend([result.stdout, result.stderr])
        return result

    assert run("sync").returncode == 0  # clone
    remote.commit("v2", {"models/git_marker.sql": "select 'v2' as version\n"})
    remote.push("main")
    fetched = run("run", "marker", "-d", "2024-02-01")  # fetch, inside the run (sync_on_run)
    assert fetched.returncode == 0 and "(changed;" in fetched.stdout, fetched.stdout + fetched.stderr
    assert sum(1 for _, _, user in git_http_server.requests if user) >= 2  # the canary really travelled

    git_http_server.set_tokens({"a-rotated-token"})
    remote.commit("v3", {"models/git_marker.sql": "select 'v3' as version\n"})
    remote.push("main")
    assert "fatal: Authentication failed" in one_line_error(run("sync"))
    refused = run("run", "marker", "-d", "2024-02-01")  # its sync fails auth; it runs the current revision
    assert refused.returncode == 0 and "Authentication failed" in refused.stderr

    git_http_server.set_tokens({http_token})
    remote.commit("fails at run time", {"models/git_marker.sql": "select * from no_such_table\n"})
    remote.push("main")
    failed = run("run", "marker", "-d", "2024-02-01")  # synced (it parses), then dbt fails
    assert failed.returncode == 1, failed.stdout[-2000:] + failed.stderr[-2000:]
    runs = [flow_run_id(r) for r in (fetched.stdout, refused.stdout, failed.stdout)]
    assert flow_run(runs[-1]).state.type.value == "FAILED"

    assert [o for o in outputs if http_token in o] == []
    assert (demo_project / "dbt_projects" / ".git_sync" / "tiny" / "repo.git" / "config").is_file()
    assert _files_containing(tmp_path, needles) == []  # the project, its logs and .git/config, HOME, remotes
    assert not (git_home / ".git-credentials").exists()
    logs = [message for run_id in runs for message in flow_run_logs(run_id)]
    assert any("dbt project tiny at commit" in m for m in logs)  # the logs were really read
    assert [m for m in logs if http_token in m] == []
    for run_id in runs:
        assert http_token not in repr(flow_run(run_id).parameters)
    prefect_home = Path(os.environ.get("PREFECT_HOME", "/nonexistent"))
    if prefect_home.is_dir():  # the session's Prefect server database holds what the API holds
        assert _files_containing(prefect_home, [f"dbt-commit:{remote.sha()[:12]}".encode()]) != []
        assert _files_containing(prefect_home, needles) == []
    (tmp_path / "planted").write_bytes(needles[1])  # the scan itself finds a planted copy
    assert _files_containing(tmp_path, needles) == [str(tmp_path / "planted")]
