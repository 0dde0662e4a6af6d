"""Which flow runs still have a live process, and Crashed for those whose process is gone.

A flow run that mage_dbt runs (pipeline, rebuild and full-refresh flows) holds an exclusive
`flock` on `<data_dir>/runs/<flow run id>/process.lock` while its body runs; the file names the pid
and host. The kernel drops the lock when the process dies, SIGKILL and power loss included, so a
run that Prefect still shows RUNNING (or PENDING/CANCELLING) while nobody holds its lock was left
by a dead process: `mark_dead_runs` sets it Crashed, which is what `mage-dbt retry` then offers, and
gives back the concurrency slots it held.
The same idea as the backfill lock (`mage_dbt.backfill.lock`), per flow run.

Only runs of this project (their lock file is under this project's data folder) written on this
host are judged: a lock held on another machine cannot be seen from here.

Slots of a dead run. A run's concurrency slots are Prefect leases (`mage_dbt.runs.concurrency`); a run
whose process dies keeps them until the lease ends (`LEASE_SECONDS` plus the server's repossessor
loop): about 75 s in which the next run of the same DuckDB file or pipeline, a `mage-dbt retry` right
after a crash included, waited for a slot nobody used. So a run writes the ids of its leases beside
its lock (`runs/<flow run id>/leases`, removed when it gives the slots back); a run that finds a limit
full first releases the leases of this project's dead runs and marks them Crashed (`release_dead`),
and `mark_dead_runs` releases those of each run it marks Crashed. Only the kernel's word that the
lock's process is gone frees a slot early; a lease whose run lives on, or lives on another host,
waits for its end as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import Any, Iterable, Iterator

from mage_dbt.files import flock_held, write_atomically

LOCK_NAME = "process.lock"
LEASES_NAME = "leases"
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

    marked: list[str] = []
    run_filter = FlowRunFilter(state=FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType(s) for s in UNFINISHED])))
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(flow_run_filter=run_filter, limit=200):
            path = lock_path(data_dir, str(run.id))
            if not path.exists() or not is_dead(path):
                continue
            release_run(client, data_dir, str(run.id))  # its concurrency slots, without waiting for the lease
            _set_crashed(client, run.id, path)
            marked.append(run.name)
    return marked


def _set_crashed(client: Any, flow_run_id: Any, path: Path) -> None:
    """Crashed for the run of the dead lock file `path`, naming its process; the lock file goes."""
    from prefect.states import Crashed

    pid, host = holder(path) or ("?", "?")
    client.set_flow_run_state(
        flow_run_id, Crashed(message=f"its process {pid} on {host} is gone (killed or lost power)"), force=True)
    with contextlib.suppress(OSError):
        path.unlink()


def leases_path(data_dir: Path, flow_run_id: str) -> Path:
    return Path(data_dir) / "runs" / str(flow_run_id) / LEASES_NAME


@contextlib.contextmanager
def leases_recorded(data_dir: Path | None, flow_run_id: str | None, lease_ids: Iterable[Any]):
    """Keep the run's lease ids on disk while the block runs (nothing without a data folder or run id)."""
    ids = [str(lease) for lease in lease_ids]
    if data_dir is None or not flow_run_id or not ids:
        yield
        return
    path = leases_path(data_dir, flow_run_id)
    write_atomically(path, "".join(f"{lease}\n" for lease in ids))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


def release_run(client: Any, data_dir: Path, flow_run_id: str) -> int:
    """Release the recorded leases of a run known to be dead; how many were released."""
    path = leases_path(data_dir, flow_run_id)
    try:
        ids = path.read_text().split()
    except OSError:
        return 0
    released = 0
    for lease in ids:
        try:
            client.release_concurrency_slots_with_lease(lease_id=lease)
            released += 1
        except Exception:  # noqa: BLE001 — ended or repossessed already: nothing held any more
            pass
    with contextlib.suppress(OSError):
        path.unlink()
    return released


def release_dead(data_dir: Path | None) -> list[str]:
    """Release the leases of this project's runs whose process is gone on this host, and set Crashed on
    those Prefect still shows unfinished (as `mark_dead_runs` does); their flow run ids."""
    if data_dir is None:
        return []
    dead = [path.parent.name for path in sorted((Path(data_dir) / "runs").glob(f"*/{LEASES_NAME}"))
            if is_dead(path.with_name(LOCK_NAME))]
    if not dead:
        return []
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        freed = [run_id for run_id in dead if release_run(client, data_dir, run_id)]
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=freed))) if freed else []
        for run in runs:
            if run.state and run.state.type.value in UNFINISHED:
                _set_crashed(client, run.id, lock_path(data_dir, str(run.id)))
    return freed
