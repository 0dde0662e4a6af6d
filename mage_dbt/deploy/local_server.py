"""The local Prefect server that mage-dbt commands share when no Prefect server is configured.

Owns the embedded default: when PREFECT_API_URL is not set (neither in the environment nor in the
active Prefect profile), `ensure_local_server()` points this process at one `prefect server start`
on 127.0.0.1, started on first use in the background over Prefect's own database (SQLite under
PREFECT_HOME) and reused by every later command, instead of the temporary server Prefect would
start and stop for every command. Its files, all in PREFECT_HOME:

- `mage_dbt_server.json`    the record: pid, supervisor pid, port, url, log, started_at, idle timeout
- `mage_dbt_server.log`     what the server (and its supervisor) printed
- `mage_dbt_server.lock`    exclusive flock held while a command starts (or replaces) the server,
                            so two commands starting at once end up with one server
- `mage_dbt_server.clients` shared flock held by each command that uses the server, for its life
- `mage_dbt_server.used`    its modification time is the last use

A small supervisor process (`mage_dbt.deploy.server_process`) owns the server
process: it stops it when it has been idle for MAGE_DBT_LOCAL_SERVER_IDLE_MINUTES (default 30) —
idle meaning no command holds the clients lock and none started since — and removes the record.

Settings (environment): MAGE_DBT_LOCAL_SERVER=0 keeps Prefect's temporary server per command;
MAGE_DBT_LOCAL_SERVER_IDLE_MINUTES (0: never stop); MAGE_DBT_LOCAL_SERVER_START_TIMEOUT (seconds,
default 180); MAGE_DBT_LOCAL_SERVER_PORT (default: a free port).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from mage_dbt.deploy.server_process import (
    HOST, SUPERVISOR_MARKERS, SUPERVISOR_MODULE, SUPERVISOR_SAYS, Paths, ServerRecord, _alive, _is_ours,
    _remove_record_of, _terminate, _touch, read_record,
)
from mage_dbt.errors import MageDbtError

ENABLED_ENV = "MAGE_DBT_LOCAL_SERVER"
IDLE_ENV = "MAGE_DBT_LOCAL_SERVER_IDLE_MINUTES"
START_TIMEOUT_ENV = "MAGE_DBT_LOCAL_SERVER_START_TIMEOUT"
PORT_ENV = "MAGE_DBT_LOCAL_SERVER_PORT"
DEFAULT_IDLE_MINUTES = 30.0
DEFAULT_START_TIMEOUT = 180.0
FIX_HINT = (
    "set PREFECT_API_URL to a running Prefect server (e.g. one started with `mage-dbt server`), "
    f"or {ENABLED_ENV}=0 for a temporary server per command; the log may say more"
)


class LocalServerError(MageDbtError):
    """The local Prefect server could not be started or reached."""


# The clients lock this process holds while it uses the server (released by the kernel at exit).
_CLIENT_FD: Optional[int] = None
_ENSURED: Optional[ServerRecord] = None


# ---------------------------------------------------------------- configuration


def enabled() -> bool:
    """False when the user opted out with MAGE_DBT_LOCAL_SERVER=0 (or false/no/off)."""
    return os.environ.get(ENABLED_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def idle_minutes() -> float:
    return _float_env(IDLE_ENV, DEFAULT_IDLE_MINUTES)


def start_timeout() -> float:
    return _float_env(START_TIMEOUT_ENV, DEFAULT_START_TIMEOUT)


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise LocalServerError(f"{name}={raw!r} is not a number", hint=f"e.g. {name}={default:g}") from None
    if value < 0:
        raise LocalServerError(f"{name}={raw!r} is negative", hint=f"e.g. {name}={default:g}")
    return value


def configured_api_url() -> Optional[str]:
    """The Prefect API this process would use as Prefect resolves it (env, profile, prefect.toml)."""
    url = _prefect_settings().api.url
    return str(url) if url else None


def prefect_home() -> Path:
    """PREFECT_HOME as Prefect resolves it (default ~/.prefect)."""
    return Path(_prefect_settings().home).expanduser()


def _prefect_settings():
    # Prefect warns (with a source line) when it cannot create PREFECT_HOME; we say it in one line.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from prefect.settings import get_current_settings

        return get_current_settings()


# ---------------------------------------------------------------- the client side


def ensure_local_server(announce: Callable[[str], None] | None = None) -> Optional[ServerRecord]:
    """Point this process at the shared local Prefect server, starting it if needed.

    Returns None (and changes nothing) when a Prefect server is configured or the local server is
    switched off; then Prefect's own default applies (its temporary server, given a generous
    start-up timeout by `mage_dbt.runs.prefect_setup.quiet_prefect_console`).
    """
    global _ENSURED
    if _ENSURED is not None:
        return _ENSURED
    if not enabled() or os.environ.get("PREFECT_API_URL") or configured_api_url():
        return None
    announce = announce or _to_stderr
    paths = Paths(prefect_home())
    try:
        paths.home.mkdir(parents=True, exist_ok=True)
        _hold_clients_lock(paths)
        record = _find_or_start(paths, announce)
    except OSError as exc:
        raise LocalServerError(
            f"cannot start the local Prefect server in PREFECT_HOME {paths.home}: {exc.strerror or exc}",
            hint="set PREFECT_HOME to a writable folder, or PREFECT_API_URL to a running Prefect server",
        ) from None
    _touch(paths.used)
    _use(record)
    _ENSURED = record
    return record


def _find_or_start(paths: Paths, announce: Callable[[str], None]) -> ServerRecord:
    record = read_record(paths)
    if record is not None and _alive(record.pid) and healthy(record.url):
        return record
    with _flock(paths.start_lock, fcntl.LOCK_EX):
        # Another command may have started it (or still be starting it) while we waited.
        record = read_record(paths)
        if record is not None:
            if _is_ours(record.supervisor_pid, SUPERVISOR_MARKERS) or _is_ours(record.pid, "prefect"):
                alive = lambda: _alive(record.supervisor_pid) or _alive(record.pid)  # noqa: E731
                if _wait_healthy(record.url, time.monotonic() + start_timeout(), alive):
                    return record
            _stop_record(paths, record)  # stale: dead, or alive but not answering
        return _start(paths, announce)


def _start(paths: Paths, announce: Callable[[str], None]) -> ServerRecord:
    """Start supervisor + server and wait until the API answers; the caller holds the start lock."""
    fixed_port = os.environ.get(PORT_ENV, "").strip()
    timeout, idle = start_timeout(), idle_minutes()
    attempts = 1 if fixed_port else 2  # a free port can be taken between choosing and binding it
    for attempt in range(attempts):
        port = _port(fixed_port)
        url = f"http://{HOST}:{port}/api"
        if attempt == 0:
            when = "never stops by itself" if idle == 0 else f"stops after {idle:g} min idle"
            announce(f"starting the local Prefect server at {url[:-4]} ({when}; log: {paths.log})")
        supervisor = _spawn_supervisor(paths, port, idle)
        deadline = time.monotonic() + timeout
        if _wait_healthy(url, deadline, lambda: supervisor.poll() is None):
            record = read_record(paths)
            if record is not None and record.supervisor_pid == supervisor.pid:
                from mage_dbt.deploy.zombie_runs import ensure_and_say

                _use(record)
                ensure_and_say(announce)  # runs whose process dies: Crashed by Prefect on missed heartbeats
                return record
        code = supervisor.poll()
        if code is None:  # alive but not healthy in time: stop it before saying so
            _terminate(supervisor.pid, SUPERVISOR_MARKERS)
            _remove_record_of(paths, supervisor.pid)
            raise LocalServerError(
                f"the local Prefect server did not answer within {timeout:g} s "
                f"({START_TIMEOUT_ENV}; log: {paths.log})", hint=FIX_HINT)
        last = _last_log_line(paths.log)
        if "already in use" in last:
            if attempt + 1 < attempts:
                continue
            if fixed_port:
                last = f"port {port} ({PORT_ENV}) is already in use"
        raise LocalServerError(
            f"the local Prefect server did not start: {last or f'it exited with code {code}'} "
            f"(log: {paths.log})", hint=FIX_HINT)
    raise AssertionError("unreachable")


def _port(fixed: str) -> int:
    if fixed:
        try:
            return int(fixed)
        except ValueError:
            raise LocalServerError(f"{PORT_ENV}={fixed!r} is not a port number", hint=f"e.g. {PORT_ENV}=4299") from None
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _spawn_supervisor(paths: Paths, port: int, idle: float) -> subprocess.Popen:
    from mage_dbt.deploy.serve import server_command

    argv, env = server_command(HOST, port)
    # The server logs warnings only: its access log would grow with every command.
    env.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    env["PREFECT_HOME"] = str(paths.home)
    env["PREFECT_UI_API_URL"] = f"http://{HOST}:{port}/api"  # the UI calls this server, whatever else is set
    config = {"home": str(paths.home), "argv": argv, "port": port, "idle_minutes": idle}
    _touch(paths.used)
    with open(paths.log, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", SUPERVISOR_MODULE, "supervise", json.dumps(config)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )


def _use(record: ServerRecord) -> None:
    """Point this process (and its subprocesses) at the server, also if Prefect is already imported."""
    os.environ["PREFECT_API_URL"] = record.url
    os.environ["PREFECT_UI_API_URL"] = record.url
    if "prefect.context" in sys.modules:
        sys.modules["prefect.context"].refresh_global_settings_context()


def _hold_clients_lock(paths: Paths) -> None:
    """Hold a shared lock for the rest of this process: the supervisor does not stop a server in use."""
    global _CLIENT_FD
    if _CLIENT_FD is None:
        fd = os.open(paths.clients_lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits while a supervisor is stopping its idle server
        _CLIENT_FD = fd


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- status and stop


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 never goes via a proxy


def healthy(url: str, timeout: float = 5.0) -> bool:
    try:
        with _NO_PROXY.open(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def status(home: Path | None = None) -> tuple[Paths, Optional[ServerRecord], bool]:
    """(paths, record, healthy) of the local server of PREFECT_HOME, without starting anything."""
    paths = Paths(home or prefect_home())
    record = read_record(paths)
    return paths, record, bool(record and _alive(record.pid) and healthy(record.url))


def stop(home: Path | None = None) -> Optional[ServerRecord]:
    """Stop the local server of PREFECT_HOME and remove its record; return it if it was running."""
    paths = Paths(home or prefect_home())
    if not paths.home.is_dir():
        return None
    with _flock(paths.start_lock, fcntl.LOCK_EX):
        record = read_record(paths)
        if record is None:
            return None
        running = _is_ours(record.supervisor_pid, SUPERVISOR_MARKERS) or _is_ours(record.pid, "prefect")
        _stop_record(paths, record)
        return record if running else None


def last_used(paths: Paths) -> Optional[datetime]:
    with contextlib.suppress(OSError):
        return datetime.fromtimestamp(paths.used.stat().st_mtime, timezone.utc)
    return None


def _stop_record(paths: Paths, record: ServerRecord) -> None:
    """Stop the supervisor (it stops its server); stop the server directly if the supervisor is gone."""
    _terminate(record.supervisor_pid, SUPERVISOR_MARKERS)
    _terminate(record.pid, "prefect")
    with contextlib.suppress(FileNotFoundError):
        paths.record.unlink()


def _wait_healthy(url: str, deadline: float, alive: Callable[[], bool]) -> bool:
    """Poll the API until it answers, the server's processes end (`alive()` false), or the deadline passes."""
    while True:
        if healthy(url, timeout=min(5.0, max(0.5, deadline - time.monotonic()))):
            return True
        if not alive() or time.monotonic() > deadline:
            return False
        time.sleep(0.2)  # polling interval while the server starts


def _last_log_line(log: Path) -> str:
    """The server's last message, rejoined when the console wrapped it (e.g. 'Port 4299 is already in use ...')."""
    with contextlib.suppress(OSError):
        paragraphs, current = [], []
        for line in log.read_text(errors="replace").splitlines():
            line = line.strip().strip("│").strip()
            if line.startswith(SUPERVISOR_SAYS):
                continue
            if line and not set(line) <= set("─╭╮╰╯ "):
                current.append(line)
            elif current:
                paragraphs.append(" ".join(current))
                current = []
        if current:
            paragraphs.append(" ".join(current))
        return paragraphs[-1][:300] if paragraphs else ""
    return ""


@contextlib.contextmanager
def _flock(path: Path, mode: int):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)


