"""pytest fixtures for git sync tests: hermetic git, remote repositories, a project, validators.

Registered through `pytest_plugins` (in conftest.py or in the test module). Everything is real:
bare repositories in tmp_path act as remotes, commits are made with the git CLI, `dbt_validator`
runs `dbt parse` in a subprocess against a DuckDB profile written into a temporary folder, and
`git_http_server` serves the remotes over smart HTTP with basic auth on 127.0.0.1.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import pytest
import yaml

from tests.git_http_server import GitHttpServer

__all__ = [
    "TINY_PROJECT", "RemoteRepo", "SyncProject", "git_home", "make_remote", "sync_project",
    "dbt_validator", "light_validator", "git_http_server", "http_token",
]

TINY_PROJECT = {
    "dbt_project.yml": "name: tiny\nversion: '1.0'\nconfig-version: 2\nprofile: gitsync_tiny\n",
    "models/one.sql": "select 1 as id\n",
}
# Variables that would point git at another repository (e.g. when tests run from a git hook).
_GIT_LOCATION_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR",
                      "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE", "GIT_CEILING_DIRECTORIES",
                      "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT", "GIT_ASKPASS", "SSH_ASKPASS", "GIT_SSH_COMMAND")


def git(*args: str, cwd: Path | None = None) -> str:
    """Run the git CLI for test setup; fail loudly with git's output."""
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


class RemoteRepo:
    """A bare repository (the remote) plus a working clone used to make and push commits."""

    def __init__(self, bare: Path, work: Path) -> None:
        self.bare, self.work = bare, work

    @classmethod
    def create(cls, root: Path, name: str) -> "RemoteRepo":
        bare, work = root / f"{name}.git", root / "work" / name
        git("init", "--quiet", "--bare", "--initial-branch=main", str(bare))
        git("init", "--quiet", "--initial-branch=main", str(work))
        git("remote", "add", "origin", str(bare), cwd=work)
        return cls(bare, work)

    @property
    def path(self) -> str:
        return str(self.bare)

    def commit(self, message: str, files: dict[str, str | None] | None = None) -> str:
        """Write (or delete, for None) `files`, commit everything, return the new SHA."""
        for relative, content in (files or {}).items():
            target = self.work / relative
            if content is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content, encoding="utf-8")
        git("add", "--all", cwd=self.work)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work)
        return self.sha("HEAD")

    def sha(self, rev: str = "HEAD") -> str:
        return git("rev-parse", rev, cwd=self.work)

    def push(self, branch: str = "main", *, force: bool = False) -> None:
        git("push", "--quiet", *(["--force"] if force else []), "origin", f"HEAD:refs/heads/{branch}", cwd=self.work)

    def switch(self, branch: str, start: str | None = None) -> None:
        git("checkout", "--quiet", "-B", branch, *([start] if start else []), cwd=self.work)

    def tag(self, name: str, rev: str = "HEAD", *, message: str | None = None) -> None:
        git("tag", *(["-a", "-m", message] if message else []), name, rev, cwd=self.work)
        git("push", "--quiet", "origin", f"refs/tags/{name}", cwd=self.work)


class SyncProject:
    """A mage_dbt project folder with `git_sync/repositories.yaml` and `dbt_projects/`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dbt_projects = root / "dbt_projects"
        self.config_file = root / "git_sync" / "repositories.yaml"

    def configure(self, *repositories: dict) -> None:
        self.config_file.write_text(yaml.safe_dump({"repositories": list(repositories)}), encoding="utf-8")

    def link(self, destination: str = "tiny") -> Path:
        return self.dbt_projects / destination

    def revisions(self, name: str = "tiny") -> set[str]:
        folder = self.dbt_projects / ".git_sync" / name / "revisions"
        return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@pytest.fixture
def git_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME without system or user git config, and an identity for test commits."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in _GIT_LOCATION_VARS:
        monkeypatch.delenv(name, raising=False)
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Git Sync Test")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "gitsync@example.invalid")
    return home


@pytest.fixture
def make_remote(tmp_path: Path, git_home: Path) -> Callable[..., RemoteRepo]:
    """`make_remote(name, files=TINY_PROJECT)`: a remote whose `main` holds one commit of `files`."""

    def make(name: str = "tiny", files: dict[str, str | None] | None = None) -> RemoteRepo:
        remote = RemoteRepo.create(tmp_path / "remotes", name)
        remote.commit("initial project", TINY_PROJECT if files is None else files)
        remote.push("main")
        return remote

    return make


@pytest.fixture
def sync_project(tmp_path: Path) -> SyncProject:
    root = tmp_path / "project"
    (root / "git_sync").mkdir(parents=True)
    (root / "dbt_projects").mkdir()
    return SyncProject(root)


@pytest.fixture(scope="session")
def dbt_validator(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], None]:
    """Validates a dbt project by running `dbt parse` in a subprocess (a DuckDB profile in tmp)."""
    profiles = tmp_path_factory.mktemp("gitsync_profiles")
    (profiles / "profiles.yml").write_text(yaml.safe_dump({"gitsync_tiny": {
        "target": "dev",
        "outputs": {"dev": {"type": "duckdb", "path": str(profiles / "gitsync.duckdb")}},
    }}), encoding="utf-8")
    dbt = Path(sys.executable).with_name("dbt")
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "DBT_PROFILES_DIR": str(profiles)}

    def validate(project_dir: Path) -> None:
        result = subprocess.run(
            [str(dbt), "parse", "--project-dir", str(project_dir), "--profiles-dir", str(profiles),
             "--no-partial-parse", "--no-use-colors"],
            capture_output=True, text=True, env=env, check=False,
        )
        if result.returncode != 0:
            lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
            raise RuntimeError("dbt parse failed: " + " ".join(lines[-3:]))

    return validate


@pytest.fixture(scope="session")
def light_validator() -> Callable[[Path], None]:
    """A fast check (dbt_project.yml is YAML with a name) for tests not about validation."""

    def validate(project_dir: Path) -> None:
        config = yaml.safe_load((project_dir / "dbt_project.yml").read_text(encoding="utf-8"))
        if not isinstance(config, dict) or not config.get("name"):
            raise ValueError("dbt_project.yml has no name")

    return validate


@pytest.fixture
def http_token(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh token, exported as GITSYNC_TEST_TOKEN (what `token_env` names)."""
    token = "canary-" + secrets.token_hex(16)
    monkeypatch.setenv("GITSYNC_TEST_TOKEN", token)
    return token


@pytest.fixture
def git_http_server(tmp_path: Path, git_home: Path, http_token: str) -> Iterator[GitHttpServer]:
    """Smart-HTTP server for the remotes under tmp_path/remotes, accepting only `http_token`."""
    (tmp_path / "remotes").mkdir(exist_ok=True)
    with GitHttpServer(tmp_path / "remotes", tokens={http_token}) as server:
        yield server
