"""Git sync wired into mage_dbt: the dbt checks a new revision must pass, the `mage-dbt-sync` flow's
run, and which revision of a git-synced dbt project a pipeline run uses.

The sync engine (`mage_dbt.git_sync`) knows git; this module gives it the dbt side:

- `DbtProjectHooks.validate` parses the candidate revision in-process (`mage_dbt.dbt.manifest`), keyed by
  its commit, so the parse that accepts a revision is the one the next run reuses from the cache;
  `install_deps` runs `dbt deps` (through `invoke_dbt`), which the engine calls only when
  `packages.yml` / `package-lock.yml` / `dependencies.yml` changed.
- `sync_repositories` is what `mage-dbt sync` and the `mage-dbt-sync` flow run (a deployable
  Prefect flow, `mage_dbt.sync_flow.sync_flow`, whose body is `run_sync`: parameters name, ref,
  force). A failing sync flow logs one error line (git's `fatal:` line, or dbt's error) and ends
  Failed with it as the message, without a traceback.
- `prepare_run_project` runs at the start of a pipeline run: `sync_on_run: true` syncs the
  pipeline's dbt project first; a `ref` checks another branch/tag/commit out for this run only.
  `record_commit` then logs the commit the run uses and tags the flow run `dbt-commit:<sha12>`.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from prefect import get_run_logger
from prefect.states import Failed

from mage_dbt.dbt.manifest import DbtProjectRef
from mage_dbt.errors import ConfigError, DbtProjectError, FileSystemError, GitSyncError, MageDbtError
from mage_dbt.settings import ProjectSettings, load_settings

COMMIT_TAG = "dbt-commit:"
REF_TAG = "dbt-ref:"
SYNC_FAILED_TAG = "dbt-sync-failed"
LOG = logging.getLogger("mage_dbt.sync")

if TYPE_CHECKING:
    from mage_dbt.git_sync import SyncResult


class DbtProjectHooks:
    """The engine's `validate` and `install_deps` for one dbt project name and target."""

    def __init__(self, settings: ProjectSettings, project: str, target: str | None = None) -> None:
        self.settings, self.project, self.target = settings, project, target
        self.deps_ran = False

    def ref(self, project_dir: Path) -> DbtProjectRef:
        return DbtProjectRef(
            name=self.project, project_dir=Path(project_dir).resolve(), profiles_dir=self.settings.profiles_dir,
            data_dir=self.settings.data_dir, target=self.target,
        )

    def validate(self, project_dir: Path) -> None:
        """Parse the candidate revision with dbt (once per commit: the result fills the manifest cache).

        It parses with a run's date vars (today's day interval) so that, when the project does not
        use the run dates at parse time, the traced manifest it caches serves every dated run."""
        from mage_dbt.dates import dbt_vars, interval_for
        from mage_dbt.dbt.manifest import load_manifest

        today = dbt_vars(interval_for(datetime.now(timezone.utc)))
        try:
            load_manifest(self.ref(project_dir), commit=worktree_commit(project_dir), dbt_vars=today)
        except DbtProjectError as exc:
            # parse_project's hint names the candidate folder, which is deleted when it is rejected.
            stale = "--project-dir" in (exc.hint or "")
            raise DbtProjectError(exc.message, hint=None if stale else exc.hint) from None

    def install_deps(self, project_dir: Path) -> None:
        """`dbt deps` in the candidate revision (the engine calls it only when package files changed)."""
        from mage_dbt.dbt.invocation import error_text, invoke_dbt

        ref = self.ref(project_dir)
        result = invoke_dbt(
            ["deps", "--project-dir", str(ref.project_dir), "--profiles-dir", str(ref.profiles_dir),
             "--log-path", str(ref.log_path), "--log-level", "none"],
            invocation_log=ref.invocation_log,
        )
        if not result.success:
            raise DbtProjectError(f"dbt deps failed: {error_text(result) or f'see the dbt log in {ref.log_path}'}")
        self.deps_ran = True


def worktree_commit(project_dir: Path) -> str | None:
    """The commit checked out in the git worktree holding `project_dir` (None outside git)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    result = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=project_dir, env=env,
                            capture_output=True, text=True, check=False)
    sha = result.stdout.strip()
    return sha if result.returncode == 0 and len(sha) == 40 else None


@dataclass(frozen=True)
class SyncOutcome:
    """One repository's sync, with whether `dbt deps` ran for it."""

    result: SyncResult
    deps_ran: bool

    def line(self) -> str:
        r = self.result
        old = r.previous_commit[:12] if r.previous_commit else "none"
        state = "changed" if r.changed else "unchanged"
        deps = "ran" if self.deps_ran else "not needed"
        return f"{r.name}: {r.ref} {old} → {r.commit[:12]} ({state}; dbt deps {deps}) in {r.project_dir}"

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {"name": r.name, "ref": r.ref, "commit": r.commit, "previous_commit": r.previous_commit,
                "changed": r.changed, "deps_needed": r.deps_needed, "deps_ran": self.deps_ran,
                "project_dir": str(r.project_dir)}


def sync_one(settings: ProjectSettings, name: str, ref: str | None = None, force: bool = False, *,
             target: str | None = None, config: Any = None) -> SyncOutcome:
    """Sync repository `name` with the dbt checks; raises `GitSyncError`, the previous revision stays."""
    from mage_dbt.git_sync import load_config, sync

    config = config if config is not None else load_config(settings.root)
    settings.export_environment()  # profiles read MAGE_DBT_DATA_DIR while the candidate parses
    hooks = DbtProjectHooks(settings, config.get(name).destination_name, target)
    result = sync(settings.root, name, ref, force, validate=hooks.validate, install_deps=hooks.install_deps,
                  dbt_projects_dir=settings.dbt_projects_dir, config=config)
    return SyncOutcome(result, hooks.deps_ran)


def sync_repositories(settings: ProjectSettings, name: str | None = None, ref: str | None = None,
                      force: bool = False, *, report: Callable[[str], None] | None = None) -> list[SyncOutcome]:
    """Sync `name` (default: every configured repository), reporting one line per repository.

    With several repositories a failure does not stop the others; it is raised at the end.
    """
    from mage_dbt.git_sync import load_config

    config = load_config(settings.root)
    if name is None and ref is not None and len(config.repositories) != 1:
        names = ", ".join(r.name for r in config.repositories) or "none configured"
        raise ConfigError("--ref needs the repository NAME", hint=f"configured repositories: {names}")
    names = [config.get(name).name] if name else [r.name for r in config.repositories]
    if not names:
        raise ConfigError("git_sync/repositories.yaml configures no repository",
                          hint="add one (see git_sync/repositories.example.yaml)")
    outcomes: list[SyncOutcome] = []
    failures: list[str] = []
    for repo in names:
        try:
            outcome = sync_one(settings, repo, ref, force, config=config)
        except MageDbtError as exc:
            if len(names) == 1:
                raise
            failures.append(f"{repo}: {exc.one_line()}")
            if report:
                report(f"{repo}: failed: {exc.one_line()}")
            continue
        outcomes.append(outcome)
        if report:
            report(outcome.line())
    if failures:
        raise GitSyncError(f"{len(failures)} of {len(names)} repositories failed to sync: " + "; ".join(failures),
                           hint="each failed repository stays at its previous revision")
    return outcomes


def run_sync(name: str | None = None, ref: str | None = None, force: bool = False) -> Any:
    """The sync flow's run (parameters: see `mage_dbt.sync_flow.sync_flow`): the outcomes, or a
    Failed state carrying the one-line error."""
    logger = get_run_logger()
    try:
        settings = load_settings()
        outcomes = sync_repositories(settings, name, ref, force, report=logger.info)
    except (MageDbtError, OSError) as exc:
        error = exc if isinstance(exc, MageDbtError) else FileSystemError.from_os_error(exc)
        if error is None:
            raise
        # One log line with git's own `fatal:` line (or dbt's error), and a Failed state carrying it:
        # returned, not raised, so the flow run's log holds no traceback (nothing to debug in our code).
        logger.error("%s", error.one_line())
        return Failed(message=error.one_line(), data=error)
    return [outcome.to_dict() for outcome in outcomes]


# -- pipeline runs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunProject:
    """The dbt project folder a run uses: `dbt_ref` None means the pipeline's usual (current) one."""

    dbt_ref: DbtProjectRef | None = None
    tags: tuple[str, ...] = ()


def synced_repository(settings: ProjectSettings, project: str, *, why: str) -> str:
    """The name of the git sync repository whose destination is dbt project `project`."""
    from mage_dbt.git_sync import CONFIG_FILE, load_config

    repos = load_config(settings.root).repositories if (settings.root / CONFIG_FILE).is_file() else []
    for repo in repos:
        if repo.destination_name == project:
            return repo.name
    raise ConfigError(
        f"{why} needs a git-synced dbt project, but no repository in {CONFIG_FILE} has destination '{project}'",
        hint=f"add the repository of dbt project '{project}' to {CONFIG_FILE}, or drop {why}",
    )


def prepare_run_project(settings: ProjectSettings, pipeline: str, *, ref: str | None = None,
                        target: str | None = None, log: Any = LOG) -> RunProject:
    """Sync (`sync_on_run`) or check out another `ref` of the pipeline's dbt project before a run.

    A failed `sync_on_run` sync (network, auth, a revision that does not parse) leaves the current
    revision in place and the run uses it, with a warning and the `dbt-sync-failed` tag; local
    edits, configuration errors and the very first sync failing stop the run.
    """
    from mage_dbt.pipelines.spec import load_pipeline_spec

    spec = load_pipeline_spec(settings.flows_dir, pipeline)
    if not ref and not spec.sync_on_run:
        return RunProject()
    if ref and spec.dbt is None:
        raise ConfigError(f"pipeline '{pipeline}' has no dbt project, so --ref has nothing to check out",
                          hint="add a dbt: section to the pipeline, or run it without --ref")
    project = (spec.dbt.project if spec.dbt else None) or settings.file.default_dbt_project
    repo = synced_repository(settings, project, why="--ref" if ref else "sync_on_run")
    target = target or spec.target
    settings.export_environment()
    if ref:
        return _checkout_for_run(settings, repo, project, ref, target, log)
    from mage_dbt.git_sync import LocalEditsError, revision_commit

    try:
        outcome = sync_one(settings, repo, target=target)
    except LocalEditsError:
        raise
    except GitSyncError as exc:
        current = revision_commit(settings.dbt_projects_dir / project)
        if current is None:
            raise
        log.warning("sync_on_run: %s; this run uses the current revision %s", exc.one_line(), current[:12])
        return RunProject(tags=(SYNC_FAILED_TAG,))
    run_info(log, f"sync_on_run: {outcome.line()}")
    return RunProject()


def _checkout_for_run(settings, repo: str, project: str, ref: str, target: str | None, log) -> RunProject:
    from mage_dbt.git_sync import checkout_revision, revision_commit

    hooks = DbtProjectHooks(settings, project, target)
    revision = checkout_revision(settings.root, repo, ref, validate=hooks.validate, install_deps=hooks.install_deps,
                                 dbt_projects_dir=settings.dbt_projects_dir)
    current = revision_commit(settings.dbt_projects_dir / project)
    run_info(log, f"dbt project {project}: {ref} is commit {revision.commit[:12]}, checked out for this run "
                  f"only (current revision: {current[:12] if current else 'none'})")
    dbt_ref = DbtProjectRef(name=project, project_dir=revision.project_dir, profiles_dir=settings.profiles_dir,
                            data_dir=settings.data_dir, target=target)
    return RunProject(dbt_ref=dbt_ref, tags=(REF_TAG + ref,))


def record_commit(resolved: Any, project: RunProject, log: Any = LOG) -> str | None:
    """Log the dbt project commit a run uses and tag the running flow run with it; return the SHA."""
    from mage_dbt.git_sync import revision_commit

    ref = resolved.manifest.ref if resolved.manifest is not None else resolved.dbt_ref
    commit = revision_commit(ref.project_dir) if ref is not None else None
    if ref is None:
        run_info(log, f"pipeline {resolved.name} uses no dbt project: no dbt commit to record")
    elif commit is None:
        run_info(log, f"dbt project {ref.name} ({ref.project_dir}) is not git-synced: no dbt commit to record")
    else:
        run_info(log, f"dbt project {ref.name} at commit {commit}")
    tags = ((COMMIT_TAG + commit[:12],) if commit else ()) + project.tags
    if tags:
        _tag_flow_run(tags, log)
    return commit


def run_info(log: Any, message: str) -> None:
    """An info line that reaches the flow run's log in Prefect even when its logger is quiet.

    The CLI keeps Prefect's loggers at warnings (`quiet_prefect_console`), which would drop the line
    that records a run's commit; then it is sent to the API directly, as task run logs are.
    """
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    enabled = getattr(log, "isEnabledFor", None)
    if ctx is None or ctx.flow_run is None or enabled is None or enabled(logging.INFO):
        log.info("%s", message)
        return
    from datetime import datetime, timezone

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import LogCreate

    try:
        with get_client(sync_client=True) as client:
            client.create_logs([LogCreate(name="mage_dbt", level=logging.INFO, message=message,
                                          timestamp=datetime.now(timezone.utc), flow_run_id=ctx.flow_run.id)])
    except Exception as exc:  # noqa: BLE001 - losing a log line must not fail the run
        log.warning("could not send a log line to Prefect (%s): %s", exc, message)


def _tag_flow_run(tags: tuple[str, ...], log: Any) -> None:
    """Add `tags` to the running flow run (a run outside Prefect has none to tag)."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        return
    try:
        with get_client(sync_client=True) as client:
            current = list(client.read_flow_run(ctx.flow_run.id).tags or [])
            client.update_flow_run(ctx.flow_run.id, tags=current + [t for t in tags if t not in current])
    except Exception as exc:  # noqa: BLE001 - the log line above already records the commit
        log.warning("could not tag flow run %s with %s: %s", ctx.flow_run.id, ", ".join(tags), exc)
