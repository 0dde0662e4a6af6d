"""Git sync over a real smart-HTTP server with basic auth: tokens, outages, submodules, no leaks."""

from __future__ import annotations

import base64
import logging
import os
import pickle
import secrets
import tempfile
import traceback
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mage_dbt.errors import ConfigError, GitSyncError
from mage_dbt.git_sync import GitCommandFailed, revision_commit, sync
from tests.git_http_server import GitHttpServer
from tests.gitsync_fixtures import *  # noqa: F401,F403 - fixtures (until conftest registers the plugin)
from tests.gitsync_fixtures import RemoteRepo, git


def _http_repo(server: GitHttpServer, remote: RemoteRepo, **extra: object) -> dict:
    return {"name": "tiny", "url": server.url(remote.bare.name), "token_env": "GITSYNC_TEST_TOKEN", **extra}


def test_token_auth_clone_fetch_and_auth_failures(sync_project, make_remote, git_http_server, light_validator) -> None:
    remote = make_remote()
    sync_project.configure(_http_repo(git_http_server, remote))

    first = sync(sync_project.root, validate=light_validator)
    assert first.commit == remote.sha()
    assert ("POST", "/tiny.git/git-upload-pack", "x-access-token") in git_http_server.requests
    config = (sync_project.dbt_projects / ".git_sync/tiny/repo.git/config").read_text()
    assert f"url = {git_http_server.url('tiny.git')}\n" in config

    second = remote.commit("more", {"models/two.sql": "select 2 as id\n"})
    remote.push("main")
    assert sync(sync_project.root, validate=light_validator).commit == second  # fetch, authenticated

    git_http_server.set_tokens({"a-rotated-token"})
    remote.commit("unreachable for now", {"models/three.sql": "select 3 as id\n"})
    remote.push("main")
    with pytest.raises(GitCommandFailed) as wrong:
        sync(sync_project.root, validate=light_validator)
    assert f"fatal: Authentication failed for '{git_http_server.url('tiny.git')}/'" in str(wrong.value)
    assert "check the credentials" in str(wrong.value)
    assert revision_commit(sync_project.link()) == second

    sync_project.configure({"name": "tiny", "url": git_http_server.url("tiny.git")})  # no token at all
    with pytest.raises(GitCommandFailed, match="fatal: could not read Username .*terminal prompts disabled"):
        sync(sync_project.root, validate=light_validator)
    assert revision_commit(sync_project.link()) == second


def test_server_down_keeps_the_current_revision(tmp_path, sync_project, make_remote, http_token, light_validator):
    remote = make_remote()
    server = GitHttpServer(tmp_path / "remotes", tokens={http_token}).start()
    url = server.url("tiny.git")
    try:
        sync_project.configure(_http_repo(server, remote))
        current = sync(sync_project.root, validate=light_validator).commit
    finally:
        server.stop()
    remote.commit("pushed while the server is down", {"models/two.sql": "select 2 as id\n"})
    remote.push("main")

    with pytest.raises(GitCommandFailed) as caught:
        sync(sync_project.root, validate=light_validator)
    message = str(caught.value)
    assert f"fatal: unable to access '{url}/'" in message and "onnect" in message
    assert "reachable" in message
    assert revision_commit(sync_project.link()) == current and sync_project.revisions() == {current}


def test_submodules_are_checked_out_with_the_same_credentials(
    sync_project, make_remote, git_http_server, light_validator
) -> None:
    shared = make_remote("shared", files={"macros/hello.sql": "{% macro hello() %}'hi'{% endmacro %}\n"})
    remote = make_remote()
    git("-c", "protocol.file.allow=always", "submodule", "--quiet", "add", shared.path, "shared", cwd=remote.work)
    git("config", "-f", ".gitmodules", "submodule.shared.url", "../shared.git", cwd=remote.work)
    with_submodule = remote.commit("add shared macros as a submodule", {
        "dbt_project.yml": "name: tiny\nversion: '1.0'\nconfig-version: 2\nprofile: gitsync_tiny\n"
                           "macro-paths: [macros, shared/macros]\n",
    })
    remote.push("main")

    sync_project.configure(_http_repo(git_http_server, remote, submodules=True))
    result = sync(sync_project.root, validate=light_validator)
    assert result.commit == with_submodule
    assert "hello()" in (sync_project.link() / "shared" / "macros" / "hello.sql").read_text()
    assert any(path == "/shared.git/git-upload-pack" and user for _, path, user in git_http_server.requests)

    (sync_project.link() / "shared" / "macros" / "hello.sql").write_text("edited\n")
    with pytest.raises(GitSyncError, match="local edits"):
        sync(sync_project.root, validate=light_validator)

    sync_project.configure(_http_repo(git_http_server, remote, submodules=True),
                           {**_http_repo(git_http_server, remote), "name": "plain"})  # submodules off
    plain = sync(sync_project.root, "plain", validate=light_validator)
    assert plain.commit == with_submodule and not any((sync_project.link("plain") / "shared").iterdir())


def test_token_from_a_prefect_secret_block(
    sync_project, make_remote, git_http_server, http_token, light_validator, monkeypatch
) -> None:
    """Uses the Prefect server that tests/conftest.py starts for the test session (on 127.0.0.1)."""
    if urlsplit(os.environ.get("PREFECT_API_URL", "")).hostname != "127.0.0.1":
        pytest.skip("no local test Prefect server (tests/conftest.py starts one)")
    from prefect.blocks.system import Secret

    block = f"gitsync-test-{secrets.token_hex(4)}"
    Secret(value=http_token).save(block)
    try:
        monkeypatch.delenv("GITSYNC_TEST_TOKEN")
        remote = make_remote()
        repo = {"name": "tiny", "url": git_http_server.url("tiny.git"), "token_secret_block": block}
        sync_project.configure(repo)
        assert sync(sync_project.root, validate=light_validator).commit == remote.sha()
    finally:
        Secret.delete(block)
    sync_project.configure({**repo, "token_secret_block": "gitsync-no-such-block"})
    with pytest.raises(ConfigError, match="Prefect Secret block 'gitsync-no-such-block' .*could not be loaded"):
        sync(sync_project.root, validate=light_validator)


def _files_containing(root: Path, needles: list[bytes]) -> list[str]:
    found = []
    for folder, _dirs, files in os.walk(root, followlinks=False):
        for name in files:
            path = Path(folder) / name
            if path.is_symlink():
                continue
            data = path.read_bytes()
            if any(needle in data for needle in needles):
                found.append(str(path))
    return found


def test_canary_token_never_leaks(
    tmp_path, sync_project, make_remote, git_http_server, http_token, git_home, light_validator,
    caplog, capfd, monkeypatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    # Traps: a user credential helper that would store the token, curl traces into a file with
    # redaction off, and temporary files (the askpass helper) inside the scanned folder.
    (git_home / ".gitconfig").write_text("[credential]\n\thelper = store\n")
    monkeypatch.setenv("GIT_TRACE_CURL", str(tmp_path / "curl-trace.log"))
    monkeypatch.setenv("GIT_TRACE_REDACT", "0")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    needles = [http_token.encode(), base64.b64encode(f"x-access-token:{http_token}".encode())]

    remote = make_remote()
    sync_project.configure(_http_repo(git_http_server, remote))
    results = [sync(sync_project.root, validate=light_validator)]  # clone
    remote.commit("second", {"models/two.sql": "select 2 as id\n"})
    remote.push("main")
    results.append(sync(sync_project.root, validate=light_validator))  # fetch
    assert [r.commit for r in results] == [remote.sha("HEAD~1"), remote.sha()]
    assert sum(1 for _, _, user in git_http_server.requests if user) >= 2  # the canary was really sent

    def leaky_validator(project_dir: Path) -> None:  # a failing run whose error quotes the token
        raise RuntimeError(f"could not connect with {http_token}")

    remote.commit("third", {"models/three.sql": "select 3 as id\n"})
    remote.push("main")
    errors = []
    with pytest.raises(GitSyncError) as failed_run:
        sync(sync_project.root, validate=leaky_validator)
    errors.append(failed_run.value)
    git_http_server.set_tokens({"rotated-token"})
    with pytest.raises(GitSyncError) as failed_auth:
        sync(sync_project.root, validate=light_validator)
    errors.append(failed_auth.value)
    assert "Authentication failed" in str(failed_auth.value) and "could not connect with ***" in str(errors[0])

    texts = [repr(results), caplog.text, *(str(r.args) for r in caplog.records), *capfd.readouterr()]
    for error in errors:
        texts += [str(error), repr(error), str(error.hint), str(pickle.loads(pickle.dumps(error))),
                  "".join(traceback.format_exception(error))]
    assert [t for t in texts if http_token in t] == []
    assert (sync_project.dbt_projects / ".git_sync/tiny/repo.git/config").is_file()
    assert _files_containing(tmp_path, needles) == []
    assert not (git_home / ".git-credentials").exists()
    assert list(scratch.iterdir()) == []  # the askpass helper is gone
    assert "MAGE_DBT_GIT_TOKEN" not in os.environ
    # The scan itself works: a planted copy of the token is found.
    (tmp_path / "planted").write_bytes(needles[1])
    assert _files_containing(tmp_path, needles) == [str(tmp_path / "planted")]
