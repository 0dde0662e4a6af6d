"""Git sync configuration: schema, inline-secret refusal, error messages, SSH key checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mage_dbt.errors import ConfigError, GitSyncError
from mage_dbt.git_sync import load_config, parse_config, sync
from mage_dbt.git_sync.config import url_kind
from mage_dbt.git_sync.credentials import GitCredentials, scrub
from tests.gitsync_fixtures import *  # noqa: F401,F403 - fixtures (until conftest registers the plugin)
from tests.git_http_server import free_port

ROOT = Path(__file__).resolve().parents[1]
SECRET = "ghp_0123456789abcdefghijABCDEFGHIJ012345"


def test_example_configuration_is_valid() -> None:
    config = load_config(ROOT, ROOT / "git_sync" / "repositories.example.yaml")
    names = [repo.name for repo in config.repositories]
    assert names == ["analytics", "finance", "marketing"]
    analytics = config.get("analytics")
    assert (analytics.destination_name, analytics.subdirectory, analytics.token_env) == (
        "analytics", "transform", "ANALYTICS_GIT_TOKEN")
    assert config.get("finance").destination_name == "finance"
    assert url_kind(config.get("marketing").url) == "ssh"


def test_defaults_and_accepted_urls() -> None:
    repo = parse_config({"repositories": [{"name": "x", "url": "/srv/x.git"}]}, "f.yaml").get("x")
    assert (repo.ref, repo.destination_name, repo.subdirectory, repo.submodules, repo.username) == (
        "main", "x", None, False, "x-access-token")
    urls = ["https://[::1]:8443/a.git", "git@github.com:acme/a.git", "ssh://git@host:2222/a.git",
            "file:///srv/a.git", "../repos/a.git"]
    kinds = [url_kind(parse_config({"repositories": [{"name": "x", "url": u}]}, "f.yaml").get("x").url) for u in urls]
    assert kinds == ["https", "ssh", "ssh", "file", "local"]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"token": SECRET}, "repositories[0].token looks like an inline secret"),
        ({"password": "hunter2"}, "repositories[0].password looks like an inline secret"),
        ({"auth": {"github_token": SECRET}}, "inline secret"),
        ({"url": f"https://user:{SECRET}@github.com/a/b.git"}, "contains a password"),
        ({"url": f"https://{SECRET}@github.com/a/b.git"}, "looks like a token"),
        ({"url": f"https://github.com/a/b.git?access_token={SECRET}"}, "credential in its query string"),
        ({"token_env": SECRET}, "looks like a token itself"),
        ({"ssh_key_path": f"-----BEGIN OPENSSH PRIVATE KEY-----{SECRET}"}, "looks like a key itself"),
    ],
)
def test_inline_secrets_are_refused_without_echoing_them(entry: dict, expected: str) -> None:
    data = {"repositories": [{"name": "analytics", "url": "https://github.com/a/b.git", **entry}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "git_sync/repositories.yaml")
    text = str(caught.value)
    assert "git_sync/repositories.yaml" in text
    assert expected in text
    assert SECRET not in text and "hunter2" not in text
    assert "token_env" in text  # says what to do instead


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"url": None}, "repositories[0] ('a').url: Input should be a valid string"),
        ({"ref": "--upload-pack=evil"}, "repositories[0] ('a').ref: '--upload-pack=evil' is not a valid"),
        ({"destination": "../outside"}, "('a').destination: must be a simple folder name"),
        ({"subdirectory": "../up"}, "('a').subdirectory: must be a relative path"),
        ({"colour": "blue"}, "('a').colour: Extra inputs are not permitted"),
        ({"token_env": "T", "ssh_key_path": "k"}, "choose one credential source"),
        ({"ssh_key_path": "~/.ssh/k"}, "ssh_key_path is for SSH URLs"),
        ({"url": "http://git.example.com/a.git", "token_env": "T"}, "token would travel unencrypted"),
        ({"url": "ext::evil"}, "must be a git URL"),
        ({"url": "fd::3"}, "must be a git URL"),
    ],
)
def test_errors_name_the_file_the_entry_and_the_problem(entry: dict, expected: str) -> None:
    data = {"repositories": [{"name": "a", "url": "https://github.com/a/b.git", **entry}]}
    with pytest.raises(ConfigError, match="^repos.yaml: ") as caught:
        parse_config(data, "repos.yaml")
    assert expected in str(caught.value)


def test_duplicate_destinations_and_unknown_names(tmp_path: Path) -> None:
    data = {"repositories": [{"name": "a", "url": "/r/a.git"}, {"name": "b", "url": "/r/b.git", "destination": "a"}]}
    with pytest.raises(ConfigError, match="two repositories use the destination 'a'"):
        parse_config(data, "f.yaml")
    config = parse_config({"repositories": [{"name": "a", "url": "/r/a.git"}]}, "f.yaml")
    with pytest.raises(ConfigError, match=r"no git sync repository named 'zz' \(known: a\)"):
        config.get("zz")


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="repositories.yaml: git sync configuration not found"):
        load_config(tmp_path)
    file = tmp_path / "git_sync" / "repositories.yaml"
    file.parent.mkdir()
    file.write_text("repositories:\n  - name: a\n    url: [unclosed\n")
    with pytest.raises(ConfigError, match=r"repositories.yaml: not valid YAML \(line 4"):
        load_config(tmp_path)


def test_scrub_removes_token_forms_and_url_credentials() -> None:
    import base64

    header = base64.b64encode(f"x-access-token:{SECRET}".encode()).decode()
    text = f"fatal: x {SECRET} y Authorization: Basic {header} https://u:p@host/r.git"
    cleaned = scrub(text, [SECRET])
    assert SECRET not in cleaned and header not in cleaned and "u:p@" not in cleaned
    assert "https://***@host/r.git" in cleaned


def test_ssh_key_must_be_private_and_is_passed_with_git_ssh_command(tmp_path: Path) -> None:
    key = tmp_path / "deploy_key"
    key.write_text("not really a key\n")
    key.chmod(0o644)
    repo = parse_config({"repositories": [
        {"name": "s", "url": "git@example.com:acme/s.git", "ssh_key_path": str(key)}]}, "f.yaml").get("s")
    with pytest.raises(ConfigError, match=r"accessible by group or others \(mode 0644\).*chmod 600"):
        GitCredentials(repo, tmp_path).__enter__()
    key.chmod(0o600)
    with GitCredentials(repo, tmp_path) as credentials:
        command = credentials.env["GIT_SSH_COMMAND"]
    assert command.startswith(f"ssh -i {key} -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new")
    assert "GIT_ASKPASS" not in credentials.env


def test_ssh_sync_failure_surfaces_ssh_and_fatal_lines(sync_project, git_home: Path) -> None:
    """A real ssh client, told to use the key, meets a closed port: the first clone leaves nothing."""
    key = git_home / "id_test"
    key.write_text("not really a key\n")
    key.chmod(0o600)
    sync_project.configure({"name": "tiny", "url": f"ssh://git@127.0.0.1:{free_port()}/tiny.git",
                            "ssh_key_path": str(key), "timeout_seconds": 20})
    with pytest.raises(GitSyncError) as caught:
        sync(sync_project.root)
    text = str(caught.value)
    assert "fatal: Could not read from remote repository." in text
    assert "Connection refused" in text
    assert not sync_project.link().exists()
    assert not any((sync_project.dbt_projects / ".git_sync" / "tiny").glob("*.git"))


def test_missing_token_variable_is_a_clear_error(sync_project, git_home: Path, monkeypatch) -> None:
    monkeypatch.delenv("NOT_SET_TOKEN", raising=False)
    sync_project.configure({"name": "tiny", "url": "https://git.example.com/tiny.git", "token_env": "NOT_SET_TOKEN"})
    with pytest.raises(ConfigError, match="environment variable NOT_SET_TOKEN .* is not set"):
        sync(sync_project.root)
    assert "NOT_SET_TOKEN" not in os.environ
