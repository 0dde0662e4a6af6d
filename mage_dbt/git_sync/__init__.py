"""Git sync: dbt projects kept in their own repositories, synced into `dbt_projects/`.

Public API (see `git_sync/README.md` for the configuration and the layout on disk):

- `sync(project_root, name=None, ref=None, force=False, validate=None, *, install_deps=None,
  dbt_projects_dir=None, config=None) -> SyncResult` — bring one repository to a ref, atomically.
- `sync_all(project_root, ...) -> list[SyncResult]` — every configured repository.
- `checkout_revision(project_root, name, ref, ...) -> Revision` — a validated checkout of another ref
  that does not become current (one-off runs).
- `revision_commit(project_dir) -> str | None` — the commit of a synced dbt project folder.
- `load_config(project_root) -> GitSyncConfig` — the validated `git_sync/repositories.yaml`.

Modules: `config` (schema, loading), `credentials` (askpass, SSH, scrubbing), `gitcmd` (running
git), `repository` (bare clone + worktrees), `layout` (paths, symlink switch, markers),
`dependencies` (dbt packages between revisions), `sync` (the procedure), `errors`.
"""

from mage_dbt.git_sync.config import CONFIG_FILE, GitSyncConfig, RepositoryConfig, load_config, parse_config
from mage_dbt.git_sync.errors import (
    DestinationConflict,
    GitCommandFailed,
    LocalEditsError,
    RefNotFound,
    RevisionInvalid,
)
from mage_dbt.git_sync.layout import revision_commit
from mage_dbt.git_sync.sync import Revision, SyncResult, checkout_revision, sync, sync_all

__all__ = [
    "CONFIG_FILE",
    "DestinationConflict",
    "GitCommandFailed",
    "GitSyncConfig",
    "LocalEditsError",
    "RefNotFound",
    "RepositoryConfig",
    "Revision",
    "RevisionInvalid",
    "SyncResult",
    "checkout_revision",
    "load_config",
    "parse_config",
    "revision_commit",
    "sync",
    "sync_all",
]
