"""The local Prefect server's process side: its record, its supervisor process, process checks.

The supervisor (`python -m mage_dbt.deploy.server_process supervise CONFIG`, started by
`mage_dbt.deploy.local_server`) owns the `prefect server start` process: it writes the record
(`mage_dbt_server.json` in PREFECT_HOME: pid, supervisor pid, port, url, log, started_at, idle
timeout), stops the server when it has been idle for the configured minutes — idle meaning no
command holds the clients lock and none started since — or on SIGTERM, and removes the record.
The server gets SIGTERM when its supervisor dies (Linux), so no orphan server is left.

A recorded pid may have been reused: `_is_ours` checks the process's command line for a marker.
Supervisors started by mage_dbt before its modules moved (the module was then `local_server`) are
still recognised (`SUPERVISOR_MARKERS`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

HOST = "127.0.0.1"
RECORD_NAME = "mage_dbt_server.json"
LOG_NAME = "mage_dbt_server.log"
START_LOCK_NAME = "mage_dbt_server.lock"
CLIENTS_LOCK_NAME = "mage_dbt_server.clients"
USED_NAME = "mage_dbt_server.used"
SUPERVISOR_SAYS = "mage_dbt local server supervisor:"
SUPERVISOR_MODULE = "mage_dbt.deploy.server_process"
SUPERVISOR_MARKERS = (SUPERVISOR_MODULE, "mage_dbt.local_server")  # started before the move; rewrite_imports: keep


@dataclass(frozen=True)
class ServerRecord:
    """What `mage_dbt_server.json` says about the running local server."""

    pid: int  # the `prefect server start` process
    supervisor_pid: int
    port: int
    url: str  # the API URL (…/api)
    log: str
    started_at: str
    idle_minutes: float

    @property
    def ui_url(self) -> str:
        return self.url[: -len("/api")]


@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def record(self) -> Path:
        return self.home / RECORD_NAME

    @property
    def log(self) -> Path:
        return self.home / LOG_NAME

    @property
    def start_lock(self) -> Path:
        return self.home / START_LOCK_NAME

    @property
    def clients_lock(self) -> Path:
        return self.home / CLIENTS_LOCK_NAME

    @property
    def used(self) -> Path:
        return self.home / USED_NAME


def read_record(paths: Paths) -> Optional[ServerRecord]:
    try:
        raw = json.loads(paths.record.read_text())
        return ServerRecord(**{k: raw[k] for k in ServerRecord.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_record_of(paths: Paths, supervisor_pid: int) -> None:
    record = read_record(paths)
    if record is not None and record.supervisor_pid == supervisor_pid:
        with contextlib.suppress(FileNotFoundError):
            paths.record.unlink()


def _touch(path: Path) -> None:
    path.touch()
    os.utime(path)


def _terminate(pid: int, marker: str | tuple[str, ...], timeout: float = 30.0) -> None:
    """SIGTERM `pid` if it is still the process we started (its command line has `marker`),
    then wait for it to end (SIGKILL after `timeout`)."""
    if not _is_ours(pid, marker):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)  # polling a process we do not own (no wait() possible)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # an exited child not yet reaped still answers kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    return True


def _is_ours(pid: int, marker: str | tuple[str, ...]) -> bool:
    """Whether `pid` is alive and still runs our command (its command line has `marker`, or one of them)."""
    if not _alive(pid):
        return False
    markers = (marker,) if isinstance(marker, str) else marker
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            line = cmdline.read()
            return any(m.encode() in line for m in markers)
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): trust the pid
        return True


# ---------------------------------------------------------------- the supervisor process


def supervise(config: dict) -> int:
    """Run the server; stop it when idle for `idle_minutes` or on SIGTERM; keep the record true."""
    paths = Paths(Path(config["home"]))
    idle_seconds = float(config["idle_minutes"]) * 60
    poll = min(30.0, max(0.5, idle_seconds / 10)) if idle_seconds else 30.0
    stopping = threading.Event()
    server = subprocess.Popen(config["argv"], stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def on_signal(*_):
        stopping.set()
        with contextlib.suppress(OSError):
            server.terminate()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    port = int(config["port"])
    record = ServerRecord(
        pid=server.pid, supervisor_pid=os.getpid(), port=port, url=f"http://{HOST}:{port}/api",
        log=str(paths.log), started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        idle_minutes=float(config["idle_minutes"]),
    )
    tmp = paths.record.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2))
    os.replace(tmp, paths.record)
    reason = "stopped"
    while not stopping.is_set():
        try:
            server.wait(timeout=poll)  # returns at once when the server ends (or is told to)
        except subprocess.TimeoutExpired:
            if idle_seconds and _idle_stop(paths, server, idle_seconds):
                reason = f"idle for {config['idle_minutes']:g} min"
                break
            continue
        if not stopping.is_set():
            reason = f"the server exited with code {server.returncode}"
        break
    _stop_server(server)
    _remove_record_of(paths, os.getpid())
    print(f"{SUPERVISOR_SAYS} {reason}; server stopped", flush=True)
    return 0


def _idle_stop(paths: Paths, server: subprocess.Popen, idle_seconds: float) -> bool:
    """Stop the server if no command uses it and none started for `idle_seconds`. A command that
    holds the clients lock counts as use; while we hold it exclusively no command can start using
    the server, so the record goes away before anyone could pick the dying server."""
    fd = os.open(paths.clients_lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _touch(paths.used)  # in use now: the idle time counts from the end of that use
            return False
        try:
            used = paths.used.stat().st_mtime
        except FileNotFoundError:
            used = 0.0
        if time.time() - used < idle_seconds:
            return False
        _remove_record_of(paths, os.getpid())
        _stop_server(server)
        return True
    finally:
        os.close(fd)


def _stop_server(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def _die_with_parent() -> None:
    """In the server process: get SIGTERM when the supervisor dies (Linux), so no orphan server."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "supervise":
        sys.exit(supervise(json.loads(sys.argv[2])))
    print(f"usage: python -m {SUPERVISOR_MODULE} supervise CONFIG_JSON", file=sys.stderr)
    sys.exit(2)
