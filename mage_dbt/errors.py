"""The one exception hierarchy of mage_dbt.

Every error a user can cause or fix derives from `MageDbtError`: it carries a one-line message, an
optional hint saying what to do next, and the dbt node ids / results it concerns. The CLI prints
`error: <message> (<hint>)` and exits 2 for these, without a traceback. Errors pickle cleanly so
they can cross process boundaries (Prefect workers, backfill worker processes).
"""

from __future__ import annotations

import errno
import os
from typing import Any


class MageDbtError(Exception):
    """Base class: a problem the user can understand and fix."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        node_ids: tuple[str, ...] | list[str] = (),
        results: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.node_ids = tuple(node_ids)
        self.results = results

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.hint, self.node_ids, self.results))

    def one_line(self) -> str:
        """The message as the CLI shows it: what is wrong, then how to fix it."""
        text = " ".join(self.message.split())
        if self.hint:
            text += f" — {' '.join(self.hint.split())}"
        return text

    def __str__(self) -> str:
        return self.one_line()


def _rebuild(cls, message, hint, node_ids, results):
    return cls(message, hint=hint, node_ids=node_ids, results=results)


class ConfigError(MageDbtError):
    """Project, pipeline or profile configuration is missing or invalid."""


class PipelineNotFound(ConfigError):
    """No `flows/<name>.yaml` for the requested pipeline."""


class SelectionError(MageDbtError):
    """A dbt selector matched nothing or is malformed."""


class DbtProjectError(MageDbtError):
    """The dbt project does not parse, or its profile/target is unusable."""


class BlockError(MageDbtError):
    """A Python or SQL block file is invalid (no decorated function, SQL syntax error, ...)."""


class ExecutionError(MageDbtError):
    """A run failed; `node_ids` names the failed blocks."""

    exit_code = 1


class GitSyncError(MageDbtError):
    """A git sync failed; the message carries git's own `fatal:` line."""


class BackfillError(MageDbtError):
    """A backfill request is invalid or cannot be resumed."""


class FileSystemError(MageDbtError):
    """A file or folder cannot be written or read (permissions, read-only file system, disk full).

    `path` is the file or folder concerned. `from_os_error` builds one from an `OSError`, naming the
    path and saying what to do for the usual causes.
    """

    def __init__(self, message: str, *, hint: str | None = None, path: str | None = None, **extra: Any) -> None:
        super().__init__(message, hint=hint, **extra)
        self.path = path

    def __reduce__(self):
        return (_rebuild_fs, (self.message, self.hint, self.path))

    @classmethod
    def from_os_error(cls, exc: OSError, path: str | os.PathLike | None = None, *, action: str | None = None,
                      also: str | None = None) -> "FileSystemError | None":
        """One user-facing error for `exc`, naming `path` (default: the error's own filename).

        `action` is what was attempted ("write", "create the folder"); `also` is added to the advice
        for the cause (e.g. where to move the data folder). None when `exc` names no path or is not a
        file-system condition a user can fix (those are bugs or network problems and keep their
        traceback).
        """
        name = path if path is not None else exc.filename
        if name is None or exc.errno not in _FS_HINTS:
            return None
        name = os.fsdecode(name)
        action = action or ("write" if exc.errno in _WRITE_ERRNOS else "create" if exc.errno == errno.EEXIST
                            else "access")
        reason = exc.strerror or errno.errorcode.get(exc.errno, "error")
        folder = name if os.path.isdir(name) else os.path.dirname(os.path.abspath(name)) or "/"
        advice = _FS_HINTS[exc.errno]
        if exc.errno == errno.ENOENT and action == "access":
            advice = "check the path"
        advice = advice.format(path=name, folder=folder) + (f"; {also}" if also else "")
        return cls(f"cannot {action} {name}: {reason}", hint=advice, path=name)


def _rebuild_fs(message, hint, path):
    return FileSystemError(message, hint=hint, path=path)


_WRITE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT}
_FS_HINTS = {
    errno.EACCES: "give this user write access to {folder}, or choose another path",
    errno.EPERM: "give this user write access to {folder}, or choose another path",
    errno.EROFS: "that file system is mounted read-only: choose a path on a writable one",
    errno.ENOSPC: "the disk is full: free space on the device holding {folder}, or choose another path",
    errno.EDQUOT: "the disk quota is used up: free space on the device holding {folder}, or choose another path",
    errno.ENOENT: "the folder {folder} does not exist or takes no new files: choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "that is a folder: name a file",
    errno.EEXIST: "something else is in the way (e.g. a file where a folder belongs): move it or choose another path",
    errno.ENAMETOOLONG: "shorten the path",
}
