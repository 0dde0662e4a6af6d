"""Which flow runs still have a live process, and Crashed for those whose process is gone.

A flow run that mage_dbt runs (pipeline, rebuild and full-refresh flows) holds an exclusive
`flock` on `<data_dir>/runs/<flow run id>/process.lock` while its body runs; the file names the pid
and host. The kernel drops the lock when the process dies, SIGKILL and power loss included, so a
run that Prefect still shows RUNNING (or PENDING/CANCELLING) while nobody holds its lock was left
by a dead process: `mark_dead_runs` sets it Crashed, which is what `mage-dbt retry` then offers.
The same idea as the backfill lock (`mage_dbt.backfill.lock`), per flow run.

Only runs of this project (their lock file is under this project's data folder) written on this
host are judged: a lock held on another machine cannot be seen from here.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import Iterator

from mage_dbt.files import flock_held

LOCK_NAME = "process.lock"
UNFINISHED = ("RUNNING", "PENDING", "CANCELLING")


def lock_path(data_dir: Path, flow_run_id: str) -> Path:
    return Path(data_dir) / "runs" / str(flow_run_id) / LOCK_NAME


@contextlib.contextmanager
def hold_run_lock(data_dir: Path, flow_run_id: str | None) -> Iterator[None]:
    """Hold the lock of `flow_run_id` while the block runs; removed when it ends normally."""
    if not flow_run_id:
        yield
        return
    path = lock_path(data_dir, flow_run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}".encode(), 0)
    except OSError:  # held already (a retried engine call in the same run): nothing to add
        os.close(fd)
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # a run refused before it wrote anything leaves no folder
        os.close(fd)


def holder(path: Path) -> tuple[str, str] | None:
    """(pid, host) written in the lock file, or None when it cannot be read."""
    try:
        pid, _, host = path.read_text().strip().partition(" ")
    except OSError:
        return None
    return (pid, host) if pid else None


def is_dead(path: Path) -> bool:
    """Whether the run of this lock file was left by a dead process on this host."""
    found = holder(path)
    if found is None or found[1] != socket.gethostname():
        return False
    return flock_held(path) is False  # None: removed meanwhile, the run ended normally


def mark_dead_runs(data_dir: Path) -> list[str]:
    """Set Crashed on this project's unfinished flow runs whose process is gone; returns their names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    marked: list[str] = []
    run_filter = FlowRunFilter(state=FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType(s) for s in UNFINISHED])))
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_run_filter=run_filter, limit=200):
            path = lock_path(data_dir, str(run.id))
            if not path.exists() or not is_dead(path):
                continue
            pid, host = holder(path) or ("?", "?")
            client.set_flow_run_state(
                run.id, Crashed(message=f"its process {pid} on {host} is gone (killed or lost power)"), force=True)
            with contextlib.suppress(OSError):
                path.unlink()
            marked.append(run.name)
    return marked
