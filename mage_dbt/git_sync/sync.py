"""Sync orchestration: bring a configured repository to a ref, switching revisions only when safe.

`sync()` is the whole procedure for one repository: refuse on local edits (unless forced), clone
or fetch, resolve the ref, check the commit out beside the current revision, carry installed dbt
packages over (or run the caller's `install_deps`), let the caller's `validate` parse the project,
and only then swap the destination symlink. Every failure before the swap leaves the previous
revision current and untouched. `checkout_revision()` prepares a revision without making it current
(a one-off run against another ref). Git, the disk layout and credentials live in their own modules.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from mage_dbt.errors import ConfigError, GitSyncError, MageDbtError
from mage_dbt.git_sync.config import GitSyncConfig, RepositoryConfig, load_config, validate_ref
from mage_dbt.git_sync.credentials import GitCredentials
from mage_dbt.git_sync.dependencies import carry_over_packages, deps_needed, excluded_patterns
from mage_dbt.git_sync.errors import LocalEditsError, RevisionInvalid
from mage_dbt.git_sync.gitcmd import GitRunner
from mage_dbt.git_sync.layout import MARKER_FILE, SyncPaths, read_marker, write_marker
from mage_dbt.git_sync.repository import CacheRepository

log = logging.getLogger("mage_dbt.git_sync")

# A validator gets the dbt project folder of the new revision; it raises (or returns False) to reject it.
Validator = Callable[[Path], object]
# Installs dbt packages into the new revision's project folder (e.g. runs `dbt deps`) before validation.
DepsInstaller = Callable[[Path], object]
# One-off checkouts (not current) older than this are pruned by the next sync.
ADHOC_GRACE_SECONDS = 24 * 3600


@dataclass(frozen=True)
class SyncResult:
    """What a sync did. `changed`: the files behind `project_dir` changed (new commit or edits discarded)."""

    name: str
    ref: str
    commit: str
    previous_commit: str | None
    changed: bool
    deps_needed: bool
    project_dir: Path  # dbt_projects/<destination>, the symlink runs should use
    revision_dir: Path  # the dbt project folder inside the revision it points to


@dataclass(frozen=True)
class Revision:
    """A checked-out, validated revision that is not (necessarily) current: for one-off runs."""

    name: str
    ref: str
    commit: str
    project_dir: Path
    deps_needed: bool


@dataclass
class _Session:
    repo: RepositoryConfig
    paths: SyncPaths
    cache: CacheRepository
    credentials: GitCredentials
    url: str

    def write_excludes(self) -> None:
        if (self.paths.repo / "HEAD").is_file():
            self.cache.write_excludes(excluded_patterns(self.repo.subdirectory, MARKER_FILE))


def _pick_repository(config: GitSyncConfig, name: str | None) -> RepositoryConfig:
    if name is not None:
        return config.get(name)
    if len(config.repositories) == 1:
        return config.repositories[0]
    names = ", ".join(r.name for r in config.repositories) or "none configured"
    raise ConfigError(f"name the repository to sync (configured: {names})")


def _checked_ref(ref: str) -> str:
    try:
        return validate_ref(ref)
    except ValueError as exc:
        raise ConfigError(str(exc), hint="give a branch, tag or commit SHA") from None


@contextlib.contextmanager
def _session(project_root: Path, repo: RepositoryConfig, dbt_projects_dir: Path | None) -> Iterator[_Session]:
    root = Path(project_root).resolve()
    projects = Path(dbt_projects_dir).resolve() if dbt_projects_dir else root / "dbt_projects"
    paths = SyncPaths(projects, repo.name, repo.destination_name)
    with paths.lock(), GitCredentials(repo, root) as credentials:
        runner = GitRunner(credentials, timeout=repo.timeout_seconds, label=repo.name)
        yield _Session(repo, paths, CacheRepository(paths.repo, runner), credentials, repo.remote_url(root))


def _update_cache(session: _Session) -> None:
    cloned = session.cache.ensure(session.url)
    log.info("%s %s from %s", "cloned" if cloned else "fetched", session.repo.name, session.url)
    session.write_excludes()


def _run_hook(hook: Callable[[Path], object], path: Path, *, what: str, session: _Session, sha: str, ref: str) -> None:
    try:
        outcome = hook(path)
        problem = "it reported failure" if outcome is False else None
    except MageDbtError as exc:
        problem = exc.one_line()
    except Exception as exc:  # noqa: BLE001 - any failure of the caller's check rejects the revision
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        problem = session.credentials.scrub(problem)  # last line of defence
        raise RevisionInvalid(
            f"commit {sha[:12]} ({ref}) of '{session.repo.name}' failed {what}: {problem}",
            hint="the current revision stays in use; fix the dbt project in the repository and sync again",
        )


def _prepare(session: _Session, sha: str, ref: str, *, base: str | None, adhoc: bool, force: bool,
             validate: Validator | None, install_deps: DepsInstaller | None) -> tuple[Path, bool]:
    """Check `sha` out as a revision (or reuse a clean one), validated. Returns (project dir, deps needed)."""
    repo, paths, cache = session.repo, session.paths, session.cache
    revision = paths.revision_dir(sha)
    created = False
    if read_marker(revision) is not None and cache.head(revision) == sha:
        edits = cache.local_edits(revision)
        if edits and not force:
            raise _local_edits_error(session, revision, edits)
        if edits:
            cache.discard_edits(revision, submodules=repo.submodules)
    else:
        created = True
        cache.add_worktree(revision, sha, submodules=repo.submodules)
    try:
        project = revision / repo.subdirectory if repo.subdirectory else revision
        if not (project / "dbt_project.yml").is_file():
            where = f"'{repo.subdirectory}/'" if repo.subdirectory else "the repository root"
            raise RevisionInvalid(f"commit {sha[:12]} ({ref}) of '{repo.name}' has no dbt_project.yml in {where}",
                                  hint="set `subdirectory` to the folder holding dbt_project.yml")
        needed = deps_needed(cache, old=base, new=sha, subdirectory=repo.subdirectory)
        if not needed and base is not None and base != sha:
            old_project = paths.revision_dir(base) / repo.subdirectory if repo.subdirectory else paths.revision_dir(base)
            needed = not carry_over_packages(old_project, project)
        if needed and install_deps is not None:
            _run_hook(install_deps, project, what="installing dbt packages", session=session, sha=sha, ref=ref)
        if validate is not None:
            _run_hook(validate, project, what="validation", session=session, sha=sha, ref=ref)
        if created or not adhoc:
            write_marker(revision, name=repo.name, commit=sha, ref=ref, adhoc=adhoc)
    except BaseException:
        if created:
            cache.remove_worktree(revision)
        raise
    return project, needed


def _local_edits_error(session: _Session, revision: Path, edits: list[str]) -> LocalEditsError:
    shown = ", ".join(line.strip() for line in edits[:5]) + (f" (+{len(edits) - 5} more)" if len(edits) > 5 else "")
    return LocalEditsError(
        f"{session.paths.link} has local edits not in git ({shown}) in revision {revision.name[:12]}",
        hint="commit them to the repository, or sync with force to discard them",
    )


def _prune(session: _Session, keep: set[str]) -> None:
    """Delete revisions that are neither current nor previous (one-off checkouts after a grace period)."""
    revisions = session.paths.revisions
    if not revisions.is_dir():
        return
    now = time.time()
    for revision in revisions.iterdir():
        if revision.name in keep:
            continue
        marker = read_marker(revision)
        if marker is not None and marker.get("adhoc"):
            if now - (revision / MARKER_FILE).stat().st_mtime < ADHOC_GRACE_SECONDS:
                continue
        log.info("pruning revision %s of %s", revision.name[:12], session.repo.name)
        session.cache.remove_worktree(revision)


def sync(
    project_root: str | Path,
    name: str | None = None,
    ref: str | None = None,
    force: bool = False,
    validate: Validator | None = None,
    *,
    install_deps: DepsInstaller | None = None,
    dbt_projects_dir: str | Path | None = None,
    config: GitSyncConfig | None = None,
) -> SyncResult:
    """Bring repository `name` (the only one when None) to `ref` (default: its configured ref).

    The new revision becomes current only once it checked out cleanly, packages are in place and
    `validate(project_dir)` passed; any failure raises `GitSyncError` and leaves the previous
    revision current. Local edits in the current revision make it refuse unless `force`.
    """
    root = Path(project_root)
    config = config if config is not None else load_config(root)
    repo = _pick_repository(config, name)
    ref = _checked_ref(ref or repo.ref)
    with _session(root, repo, Path(dbt_projects_dir) if dbt_projects_dir else None) as session:
        paths, cache = session.paths, session.cache
        paths.check_destination(force=force)
        current = paths.current_commit()
        current_dir = paths.revision_dir(current) if current else None
        session.write_excludes()
        edits = cache.local_edits(current_dir) if current_dir and (current_dir / ".git").exists() else []
        if edits and not force:
            raise _local_edits_error(session, current_dir, edits)
        _update_cache(session)
        sha = cache.resolve(ref)
        target = paths.link_target(sha, repo.subdirectory)
        log.info("%s: %s is commit %s", repo.name, ref, sha[:12])

        if sha == current and paths.current_target() == target:
            if edits:
                log.warning("discarding local edits in %s (force)", paths.link)
                cache.discard_edits(current_dir, submodules=repo.submodules)
            paths.write_state(current=sha, ref=ref)
            return SyncResult(repo.name, ref, sha, current, bool(edits), False, paths.link, paths.link.resolve())

        project, needed = _prepare(session, sha, ref, base=current, adhoc=False, force=force,
                                   validate=validate, install_deps=install_deps)
        paths.switch(target)
        previous = current if current != sha else paths.read_state().get("previous")
        paths.write_state(current=sha, previous=previous, ref=ref)
        log.info("switched %s to %s (%s), was %s", paths.link, sha[:12], ref, current[:12] if current else "none")
        _prune(session, keep={sha, *([previous] if previous else [])})
        return SyncResult(repo.name, ref, sha, current, True, needed, paths.link, project)


def sync_all(
    project_root: str | Path,
    *,
    force: bool = False,
    validate: Validator | None = None,
    install_deps: DepsInstaller | None = None,
    dbt_projects_dir: str | Path | None = None,
) -> list[SyncResult]:
    """Sync every configured repository at its configured ref; one failure does not stop the others."""
    config = load_config(Path(project_root))
    results: list[SyncResult] = []
    failures: list[str] = []
    for repo in config.repositories:
        try:
            results.append(sync(project_root, repo.name, force=force, validate=validate, install_deps=install_deps,
                                dbt_projects_dir=dbt_projects_dir, config=config))
        except MageDbtError as exc:
            failures.append(f"{repo.name}: {exc.one_line()}")
    if failures:
        raise GitSyncError(f"{len(failures)} of {len(config.repositories)} repositories failed to sync: "
                           + "; ".join(failures))
    return results


def checkout_revision(
    project_root: str | Path,
    name: str,
    ref: str,
    *,
    validate: Validator | None = None,
    install_deps: DepsInstaller | None = None,
    dbt_projects_dir: str | Path | None = None,
    config: GitSyncConfig | None = None,
) -> Revision:
    """Check `ref` out and validate it without making it current: a one-off run against another ref.

    Returns the revision's dbt project folder; the configured ref and the destination symlink stay
    as they are. The checkout is kept for at least a day, then pruned by a later sync.
    """
    root = Path(project_root)
    config = config if config is not None else load_config(root)
    repo = config.get(name)
    ref = _checked_ref(ref)
    with _session(root, repo, Path(dbt_projects_dir) if dbt_projects_dir else None) as session:
        _update_cache(session)
        sha = session.cache.resolve(ref)
        current = session.paths.current_commit()
        if sha == current:
            return Revision(repo.name, ref, sha, session.paths.link.resolve(), False)
        project, needed = _prepare(session, sha, ref, base=current, adhoc=True, force=False,
                                   validate=validate, install_deps=install_deps)
        return Revision(repo.name, ref, sha, project, needed)
