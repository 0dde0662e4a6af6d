"""Shared plumbing of the benchmarks: paths, timed subprocesses, a real Prefect server, a
throw-away Postgres database, medians, tables and JSON results.

Nothing here knows what is being measured; the bench_*.py scripts own that.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "bench"
WORK_DIR = BENCH_DIR / ".work"
RESULTS_DIR = BENCH_DIR / "results"
VENV_BIN = REPO_ROOT / ".venv" / "bin"
PG_DEFAULTS = {"PGHOST": "127.0.0.1", "PGPORT": "5432", "PGUSER": "postgres"}


def venv_exe(name: str) -> str:
    """An executable of the project virtualenv (falls back to PATH when there is no .venv)."""
    path = VENV_BIN / name
    return str(path) if path.exists() else name


def base_env(**extra: str) -> dict[str, str]:
    """The environment of every measured process: telemetry off (no network waits), fixed settings."""
    env = dict(os.environ)
    env.update(
        DBT_SEND_ANONYMOUS_USAGE_STATS="false",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def pg_env() -> dict[str, str]:
    """PG* connection variables: the caller's, else the local trust-auth server."""
    return {key: os.environ.get(key, default) for key, default in PG_DEFAULTS.items()}


@dataclass
class RunResult:
    """One measured process: wall-clock seconds, exit code, the tail of its output and, when
    asked for, the peak resident memory of the process and all its descendants (MB)."""

    seconds: float
    returncode: int
    tail: str
    peak_rss_mb: float | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def tail_of(text: str, lines: int = 15) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def _peak_rss_kb(pid: int) -> int | None:
    """VmHWM: the most resident memory this process has used so far (kB)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def _sample_tree(root: int, peaks: dict[int, int]) -> None:
    """Record the peak RSS so far of `root` and every process descended from it."""
    children, todo = _children_by_parent(), [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        kb = _peak_rss_kb(pid)
        if kb is not None:
            peaks[pid] = max(kb, peaks.get(pid, 0))


def _sample_until(root: int, peaks: dict[int, int], ended: threading.Event) -> None:
    while not ended.wait(0.2):
        _sample_tree(root, peaks)


def run_timed(cmd: Sequence[str], *, cwd: Path, env: dict[str, str], log: Path | None = None,
              timeout: float = 3600, memory: bool = False) -> RunResult:
    """Run `cmd` to completion and time it (process start to exit, as a user would see it).

    With `memory`, the process tree is sampled every 0.2 s and `peak_rss_mb` is the sum of each
    process's own peak RSS (VmHWM; the direct child's is exact, from wait4): an upper bound of the
    memory the run held at once, as its processes (mage-dbt and its dbt worker) live side by side."""
    start = time.perf_counter()
    peaks: dict[int, int] = {}
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        try:
            proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=out_file, stderr=err_file, text=True)
        except FileNotFoundError as exc:
            return RunResult(time.perf_counter() - start, 127, str(exc))
        ended, killed = threading.Event(), threading.Event()
        timed_out = threading.Timer(timeout, lambda: (killed.set(), proc.kill()))
        timed_out.start()
        sampler = threading.Thread(target=_sample_until, args=(proc.pid, peaks, ended), daemon=True)
        if memory:
            sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)  # blocks until exit: the wall time is exact
        seconds = time.perf_counter() - start
        ended.set()
        timed_out.cancel()
        proc.returncode = code = 124 if killed.is_set() else os.waitstatus_to_exitcode(status)
        if memory:
            sampler.join()
            peaks[proc.pid] = max(peaks.get(proc.pid, 0), usage.ru_maxrss)  # kB on Linux; exact
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    if code == 124:
        err += f"\ntimed out after {timeout:.0f} s"
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"$ {' '.join(cmd)}\n# exit {code} in {seconds:.2f} s\n{out}\n{err}")
    # dbt reports errors on stdout, Python tracebacks go to stderr: show whichever says more.
    return RunResult(seconds, code, tail_of(err if err.strip() else out),
                     round(sum(peaks.values()) / 1024, 1) if memory else None)


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> None:
    """A plain aligned text table: the first `left` columns left-aligned, numbers right-aligned."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def environment_info() -> dict:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),  # the machine is shared: high load = noisy figures
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def write_results(name: str, payload: dict) -> Path:
    """Write `payload` to bench/results/<name>-<UTC timestamp>.json and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps({"environment": environment_info(), **payload}, indent=2))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def prefect_server(timeout: float = 180) -> Iterator[dict[str, str]]:
    """Start one real Prefect server (temp PREFECT_HOME, free port) and yield the env for clients."""
    home = Path(tempfile.mkdtemp(prefix="bench-prefect-"))
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = base_env(PREFECT_HOME=str(home), PREFECT_UI_ENABLED="false")
    log = (home / "server.log").open("w")
    cmd = [venv_exe("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    started = False
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(api_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Prefect server did not start; see {home / 'server.log'}")
            time.sleep(0.5)
        started = True
        SERVER_GROUPS.append(proc.pid)
        yield {"PREFECT_HOME": str(home), "PREFECT_API_URL": api_url}
    finally:
        if proc.pid in SERVER_GROUPS:
            SERVER_GROUPS.remove(proc.pid)
        _stop(proc)
        log.close()
        if started:  # keep the folder (and its server.log) only when the start failed
            shutil.rmtree(home, ignore_errors=True)


SERVER_GROUPS: list[int] = []  # process groups of the Prefect servers started by prefect_server()


def server_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by every process of the running Prefect servers:
    read before and after a run, the difference is what recording that run cost the server."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) in SERVER_GROUPS:  # fields[2]: pgrp; [11], [12]: utime, stime
            total += int(fields[11]) + int(fields[12])
    return total / tick


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server's process group (it was started in its own session), politely first."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def pg_admin(statement: Any) -> None:
    """Run one statement (str or psycopg2 Composable) on the server's `postgres` database, autocommit."""
    import psycopg2  # imported here: the DuckDB-only benchmarks do not need a Postgres driver

    conn_env = pg_env()
    conn = psycopg2.connect(host=conn_env["PGHOST"], port=conn_env["PGPORT"], user=conn_env["PGUSER"],
                            password=os.environ.get("PGPASSWORD") or None, dbname="postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


@contextlib.contextmanager
def postgres_database(name: str) -> Iterator[dict[str, str]]:
    """Create a dedicated Postgres database, yield the PG* env pointing at it, drop it at the end."""
    conn_env = pg_env()
    admin = pg_admin
    admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin(f'CREATE DATABASE "{name}"')
    try:
        yield {**conn_env, "PGDATABASE": name}
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
