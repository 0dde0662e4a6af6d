"""Writing files the user relies on: atomically, and with file-system errors a user can act on.

- `replacing(path)` yields a temporary path beside `path` and renames it over `path` only when the
  writer finished, so a reader (or a user after a crash or a full disk) never finds half a file;
  the temporary file is removed when writing fails.
- `write_atomically(path, data)` is the same for bytes or text.
- `check_writable(folder)` proves a folder takes new files before a run starts, so a read-only or
  full data folder stops the command before any flow run exists instead of half-way through.

Every `OSError` these raise that names a path the user can fix (permission denied, read-only file
system, disk full, no such folder) becomes a `FileSystemError` naming the *target* path, never the
temporary one.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mage_dbt.errors import FileSystemError


@contextmanager
def replacing(path: str | os.PathLike, *, also: str | None = None) -> Iterator[Path]:
    """Yield where to write `path`'s new content; it becomes `path` when the block ends without error.

    A `path` that exists and is not a regular file (a device such as /dev/stdout, a FIFO) is
    written in place: renaming over it would replace the device."""
    target = Path(path)
    try:
        if target.exists() and not target.is_file() and not target.is_dir():
            yield target
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            yield tmp
            os.replace(tmp, target)
        except BaseException:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise
    except OSError as exc:
        error = FileSystemError.from_os_error(exc, target, action="write", also=also)
        if error is None:
            raise
        raise error from exc


def write_atomically(path: str | os.PathLike, data: bytes | str, *, also: str | None = None) -> Path:
    """Write `data` (text is UTF-8) to `path` through a temporary file and a rename; returns `path`."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with replacing(path, also=also) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(payload)
    return Path(path)


def check_writable(folder: str | os.PathLike, *, also: str | None = None) -> None:
    """FileSystemError unless `folder` exists (it is created) and takes a new file."""
    target = Path(folder)
    probe = target / f".mage_dbt_write_check.{uuid.uuid4().hex[:12]}"
    try:
        target.mkdir(parents=True, exist_ok=True)
        try:
            with open(probe, "wb") as handle:
                handle.write(b"ok")
        finally:
            probe.unlink(missing_ok=True)
    except OSError as exc:
        error = FileSystemError.from_os_error(exc, target, action="write to", also=also)
        if error is None:
            raise
        raise error from exc


def flock_held(path: Path) -> bool | None:
    """Whether some live process holds an flock on `path` (None when the file does not exist).

    A lock file a dead process left behind is not held: the kernel drops a process's locks with it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
