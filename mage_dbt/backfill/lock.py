"""Which backfills have a live process: an exclusive `flock` on `<data_dir>/backfills/<id>.lock`.

The process running a backfill holds the lock; its worker processes inherit the locked file
descriptor, so the lock lives exactly as long as any process of the backfill does. The kernel
drops it when they die, SIGKILL included. That is how a resume tells a flow run that is RUNNING in
Prefect because its process is working from one that is RUNNING because its process is gone, and
how a new backfill finds a running one over an overlapping range of the same pipeline, or writing
the same microbatch batches (`refuse_overlapping`; backfills started on other machines are found
by their running flow runs on the Prefect server).
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
    """Refuse a backfill while another one runs over an overlapping range of the same pipeline and target
    (two processes would write the same intervals at once), or of microbatch models they share (two
    invocations writing the same batches would interleave their deletes and inserts).

    Running means: its lock is held on this machine, or (a backfill started elsewhere, e.g. one
    submitting to a work pool) its backfill flow run is running on the Prefect server."""
    mine = set(plan.microbatch_blocks)
    for other in _running_here(settings, plan):
        shared = mine & set(other.microbatch_blocks or ())
        same = other.pipeline == plan.pipeline and other.target == plan.target
        if (same or shared) and other.target == plan.target and _overlap(other, plan):
            models = f"microbatch model(s) {', '.join(sorted(shared)[:5])}"
            what = (f"pipeline '{plan.pipeline}'" + (f" ({models})" if shared else "") if same else
                    f"the same {models}")
            raise BackfillError(
                f"backfill {other.id} ({other.start}..{other.end}) is running right now and writes {what} over "
                "an overlapping range",
                hint=f"wait for it (mage-dbt backfills {other.id}), or backfill dates outside {other.start}..{other.end}",
            )
    from mage_dbt.backfill.state import project_tag, running_backfill_runs

    recorded = {path.stem for path in backfills_dir(settings).glob("*.json")}  # judged by their lock above
    for other_id, start, end in running_backfill_runs(plan.pipeline, exclude=plan.id,
                                                        project=project_tag(settings.root)):
        if other_id not in recorded and start and end and start <= plan.intervals[-1].start.date().isoformat() \
                and plan.intervals[0].start.date().isoformat() <= end:
            raise BackfillError(
                f"backfill {other_id} ({start}..{end}) of pipeline '{plan.pipeline}' is running right now "
                "(on the Prefect server) over an overlapping range",
                hint=f"wait for it (mage-dbt backfills {other_id}), or backfill dates outside {start}..{end}",
            )


def _running_here(settings: Any, plan: BackfillPlan) -> list[BackfillPlan]:
    """The other backfills of this project whose lock is held right now."""
    out = []
    for path in sorted(backfills_dir(settings).glob("*.json")):
        if path.stem == plan.id or flock_held(path.with_suffix(".lock")) is not True:
            continue
        try:
            out.append(load_plan(settings, path.stem))
        except Exception:  # an unreadable record is not a running backfill of ours
            continue
    return out


def _overlap(a: BackfillPlan, b: BackfillPlan) -> bool:
    return bool(a.intervals and b.intervals and a.intervals[0].start < b.intervals[-1].end
                and b.intervals[0].start < a.intervals[-1].end)
