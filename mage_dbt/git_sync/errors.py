"""The git sync failures a caller may want to tell apart.

All derive from `mage_dbt.errors.GitSyncError`, so `except GitSyncError` catches every sync
failure; the sub-classes only let the CLI (or a test) react to one kind of failure. They keep the
base constructor, so they pickle like every other mage_dbt error.
"""

from __future__ import annotations

from mage_dbt.errors import GitSyncError


class GitCommandFailed(GitSyncError):
    """A git command failed (network, auth, missing object...); the message carries git's `fatal:` line."""


class RefNotFound(GitSyncError):
    """The requested branch, tag or commit does not exist in the remote repository."""


class LocalEditsError(GitSyncError):
    """The current revision has local edits; the sync refuses unless forced."""


class RevisionInvalid(GitSyncError):
    """The new revision checked out but is not a usable dbt project (validation failed)."""


class DestinationConflict(GitSyncError):
    """`dbt_projects/<destination>` exists and is not managed by git sync."""
