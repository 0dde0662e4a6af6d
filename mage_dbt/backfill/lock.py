"""Which backfills have a live process: an exclusive `flock` on `<data_dir>/backfills/<id>.lock`.

The process running a backfill holds the lock; its worker processes inherit the locked file
descriptor, so the lock lives exactly as long as any process of the backfill does. The kernel
drops it when they die, SIGKILL included. That is how a resume tells a flow run that is RUNNING in
Prefect because its process is working from one that is RUNNING because its process is gone, and
how a new backfill finds a running one that writes the same microbatch batches (`refuse_overlapping`).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from mage_dbt.backfill.plan import BackfillPlan, backfills_dir, load_plan
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


def refuse_overlapping(settings: Any, plan: BackfillPlan) -> None:
    """Refuse a backfill whose microbatch models and range overlap those of a running backfill
    (two invocations writing the same batches at once would interleave their deletes and inserts)."""
    if not plan.microbatch_blocks:
        return
    mine = set(plan.microbatch_blocks)
    for path in sorted(backfills_dir(settings).glob("*.json")):
        other_id = path.stem
        if other_id == plan.id or flock_held(path.with_suffix(".lock")) is not True:
            continue
        try:
            other = load_plan(settings, other_id)
        except Exception:  # an unreadable record is not a running backfill of ours
            continue
        shared = mine & set(other.microbatch_blocks or ())
        overlap = other.intervals and plan.intervals and \
            other.intervals[0].start < plan.intervals[-1].end and plan.intervals[0].start < other.intervals[-1].end
        if shared and overlap and other.target == plan.target:
            raise BackfillError(
                f"backfill {other.id} ({other.start}..{other.end}) is running right now and writes the same "
                f"microbatch model(s) over an overlapping range: {', '.join(sorted(shared)[:5])}",
                hint=f"wait for it (mage-dbt backfills {other.id}), or backfill dates outside {other.start}..{other.end}",
            )
