"""The local copy of one remote repository: a bare clone plus one git worktree per revision.

`repo.git` is a bare repository whose fetch mirrors the remote's branches (as
`refs/remotes/origin/*`) and tags with `+` refspecs, so force-pushed branches and moved tags are
simply taken over — nothing is ever merged. Each revision is checked out, detached, as a worktree
`revisions/<sha>/`; all revisions share one object store. This module knows git; it does not
decide which revision is current (that is `sync.py`) nor where the symlink points (`layout.py`).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import uuid
from pathlib import Path

from mage_dbt.git_sync.errors import GitCommandFailed, RefNotFound
from mage_dbt.git_sync.gitcmd import GitRunner

_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA = re.compile(r"^[0-9a-f]{7,39}$")
FETCH_REFSPECS = ("+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*")


def _force_rmtree(path: Path) -> None:
    def make_writable_and_retry(func, failed_path, _exc_info):
        os.chmod(failed_path, stat.S_IWRITE | stat.S_IREAD | stat.S_IEXEC)
        func(failed_path)

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=make_writable_and_retry)


class CacheRepository:
    """Git operations on `repo.git` and its worktrees, through one `GitRunner`."""

    def __init__(self, path: Path, runner: GitRunner) -> None:
        self.path = path
        self._git = runner

    # -- the bare repository -------------------------------------------------------------------

    def ensure(self, url: str) -> bool:
        """Clone on first use, otherwise point `origin` at `url`; then fetch. True when it cloned."""
        if (self.path / "HEAD").is_file():
            if self._git.ok("remote", "get-url", "origin", cwd=self.path) != url:
                self._git.run("remote", "set-url", "origin", url, cwd=self.path)
            self.fetch()
            return False
        self._clone(url)
        return True

    def _clone(self, url: str) -> None:
        # Clone into a temporary folder renamed at the end: a failed first clone leaves nothing behind.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(f".{self.path.name}.clone-{uuid.uuid4().hex[:8]}")
        try:
            self._git.run("init", "--quiet", "--bare", "--template=", str(staging), cwd=self.path.parent)
            for key, value in (("gc.autoDetach", "false"), ("maintenance.autoDetach", "false"),
                               ("core.logAllRefUpdates", "false")):
                self._git.run("config", key, value, cwd=staging)
            self._git.run("remote", "add", "origin", url, cwd=staging)
            self._fetch(staging, what="git clone")
            _force_rmtree(self.path)
            staging.rename(self.path)
        finally:
            _force_rmtree(staging)

    def fetch(self) -> None:
        self._fetch(self.path, what="git fetch")

    def _fetch(self, cwd: Path, *, what: str) -> None:
        self._git.run("fetch", "--quiet", "--prune", "--no-tags", "--no-recurse-submodules", "origin",
                      *FETCH_REFSPECS, cwd=cwd, network=True, what=what)

    def write_excludes(self, patterns: list[str]) -> None:
        """Untracked files every worktree ignores (dbt's own output); shared through the common dir."""
        info = self.path / "info"
        info.mkdir(exist_ok=True)
        (info / "exclude").write_text("\n".join(patterns) + "\n", encoding="utf-8")

    # -- refs ----------------------------------------------------------------------------------

    def _commit_of(self, rev: str) -> str | None:
        sha = self._git.ok("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}", cwd=self.path)
        return sha.strip() if sha else None

    def resolve(self, ref: str) -> str:
        """The commit SHA of a tag, branch or commit SHA of the remote (git's order: tag, then branch)."""
        candidates = [f"refs/tags/{ref}", f"refs/remotes/origin/{ref}"]
        if ref.startswith("refs/heads/"):
            candidates.insert(0, "refs/remotes/origin/" + ref.removeprefix("refs/heads/"))
        elif ref.startswith("refs/tags/"):
            candidates.insert(0, ref)
        for candidate in candidates:
            sha = self._commit_of(candidate)
            if sha:
                return sha
        lowered = ref.lower()
        if _FULL_SHA.match(lowered) or _SHORT_SHA.match(lowered):
            sha = self._commit_of(lowered)
            if sha:
                return sha
        # Not among the fetched branches and tags: ask the remote for exactly this ref or commit
        # (a commit outside every branch, `refs/pull/1/head`, `HEAD`). git's own answer explains a miss.
        try:
            self._git.run("fetch", "--quiet", "--no-tags", "origin", ref, cwd=self.path, network=True,
                          what=f"resolving ref '{ref}'")
        except GitCommandFailed as exc:
            raise RefNotFound(exc.message, hint=f"'{ref}' is no branch, tag or commit SHA of the remote") from None
        sha = self._commit_of("FETCH_HEAD")
        if not sha:
            raise RefNotFound(f"ref '{ref}' does not name a commit", hint="sync a branch, tag or commit SHA")
        return sha

    def has_commit(self, sha: str) -> bool:
        return self._commit_of(sha) is not None

    def paths_differ(self, old: str, new: str, paths: list[str]) -> bool:
        return bool(self._git.run("diff", "--name-only", old, new, "--", *paths, cwd=self.path).strip())

    def paths_exist(self, sha: str, paths: list[str]) -> bool:
        return bool(self._git.run("ls-tree", "--name-only", sha, "--", *paths, cwd=self.path).strip())

    # -- worktrees -----------------------------------------------------------------------------

    def add_worktree(self, path: Path, sha: str, *, submodules: bool) -> None:
        """Check out `sha` detached into the new folder `path` (and its submodules, recursively)."""
        self.remove_worktree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._git.run("worktree", "add", "--quiet", "--detach", str(path), sha, cwd=self.path,
                      what=f"checking out {sha[:12]}")
        if submodules:
            self._git.run("submodule", "update", "--quiet", "--init", "--recursive", cwd=path,
                          network=True, what="git submodule update")

    def remove_worktree(self, path: Path) -> None:
        # Plain deletion + prune: `git worktree remove` refuses worktrees that contain submodules.
        _force_rmtree(path)
        self._git.run("worktree", "prune", cwd=self.path)

    def head(self, path: Path) -> str | None:
        sha = self._git.ok("rev-parse", "--verify", "--quiet", "HEAD", cwd=path)
        return sha.strip() if sha else None

    def local_edits(self, path: Path) -> list[str]:
        """`git status` lines of modified, deleted and untracked files (submodules included)."""
        out = self._git.run("status", "--porcelain=v1", "--untracked-files=all", "--ignore-submodules=none",
                            cwd=path, what="checking for local edits")
        return [line for line in out.splitlines() if line.strip()]

    def discard_edits(self, path: Path, *, submodules: bool) -> None:
        """Put the worktree back to its commit: tracked files restored, untracked files deleted."""
        self._git.run("reset", "--quiet", "--hard", "HEAD", cwd=path)
        self._git.run("clean", "-ffdq", cwd=path)
        if submodules:
            self._git.run("submodule", "update", "--quiet", "--init", "--recursive", "--force", cwd=path,
                          network=True, what="git submodule update")
            self._git.run("submodule", "foreach", "--quiet", "--recursive", "git reset --quiet --hard && git clean -ffdq",
                          cwd=path)
