"""Which backfills have a live process: an exclusive `flock` on `<data_dir>/backfills/<id>.lock`.

The process running a backfill holds the lock; its worker processes inherit the locked file
descriptor, so the lock lives exactly as long as any process of the backfill does. The kernel
drops it when they die, SIGKILL included. That is how a resume tells a flow run that is RUNNING in
Prefect because its process is working from one that is RUNNING because its process is gone.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from mage_dbt.errors import BackfillError
from mage_dbt.files import flock_held


class BackfillLock:
    """An exclusive, non-blocking lock on one backfill id."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, backfill_id: str) -> "BackfillLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise BackfillError(
                f"backfill {backfill_id} is running right now (process {holder})",
                hint="wait for it to finish, or stop that process, then resume",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "BackfillLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def is_running(path: Path) -> bool:
    """Whether some live process holds the lock at `path` (without taking it for long)."""
    return flock_held(path) is True
