"""The local Prefect server of the embedded default (mage_dbt.deploy.local_server), with real processes.

Every test gets a fresh PREFECT_HOME and no PREFECT_API_URL / PREFECT_UI_API_URL (the suite's
shared server is set there by conftest), so the CLI starts, reuses and stops its own server; the
fixture stops whatever server a test started. Waiting is polling with a deadline, never a sleep.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mage_dbt.deploy import local_server
from tests.conftest import cli
from tests.support.automations import NAME as ZOMBIE_NAME, assert_zombie_automation, automations_named

SERVER_ENV = ("PREFECT_API_URL", "PREFECT_UI_API_URL", "MAGE_DBT_LOCAL_SERVER",
              "MAGE_DBT_LOCAL_SERVER_IDLE_MINUTES", "MAGE_DBT_LOCAL_SERVER_PORT",
              "MAGE_DBT_LOCAL_SERVER_START_TIMEOUT")

# A process that uses the local server: imports first, then waits for "go" on stdin (a barrier, so
# two of them ask for the server at the same moment), prints the record it got, and holds the
# server (the clients lock) until its stdin closes.
CLIENT = """
import json, sys
from dataclasses import asdict
from mage_dbt.deploy.local_server import configured_api_url, ensure_local_server
configured_api_url()  # imports Prefect's settings before the barrier
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(asdict(ensure_local_server())), flush=True)
sys.stdin.read()
"""


@pytest.fixture
def prefect_home(tmp_path, monkeypatch) -> Path:
    """A fresh PREFECT_HOME and no configured Prefect server, for this process and its children."""
    home = tmp_path / "prefect_home"
    for name in SERVER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(home))
    yield home
    local_server.stop(home)
    for pid in server_pids(home):  # whatever escaped the supervisor
        os.kill(pid, 9)
    assert not server_pids(home)


def server_pids(home: Path) -> list[int]:
    """`prefect server start` processes running with this PREFECT_HOME."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"\0server\0start\0" in cmdline and f"PREFECT_HOME={home}".encode() in environ and state != "Z":
            pids.append(int(entry.name))
    return pids


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)  # polling interval
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def record_of(home: Path) -> local_server.ServerRecord | None:
    return local_server.read_record(local_server.Paths(home))


def start_clients(count: int, env: dict | None = None) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
             for _ in range(count)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    for proc in procs:  # the barrier: all ask for the server now
        proc.stdin.write("go\n")
        proc.stdin.flush()
    return procs


def record_from(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    assert line.strip(), proc.stderr.read()
    return json.loads(line)


def finish(proc: subprocess.Popen) -> str:
    proc.stdin.close()
    proc.wait(timeout=60)
    return proc.stderr.read()


def flow_runs(api_url: str, ids: list[str]) -> dict[str, str]:
    body = json.dumps({"flow_runs": {"id": {"any_": ids}}}).encode()
    request = urllib.request.Request(f"{api_url}/flow_runs/filter", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return {run["id"]: run["state_type"] for run in json.load(response)}


def test_two_runs_share_one_local_server_started_on_first_use(demo_project, prefect_home):
    first = cli(demo_project, "run", "demo", "-d", "2024-02-01")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "starting the local Prefect server" in first.stderr and str(prefect_home) in first.stderr
    record = record_of(prefect_home)
    assert record is not None and local_server.healthy(record.url)
    assert Path(record.log) == prefect_home / "mage_dbt_server.log"
    # The server it started has Prefect's missing-heartbeat detection for mage-dbt's runs (zombie_runs).
    assert (f"automation '{ZOMBIE_NAME}' created: a run without a heartbeat for 540 s is marked Crashed"
            in " ".join(first.stderr.split())), first.stderr
    [automation] = automations_named(record.url)
    assert_zombie_automation(automation, within=540)

    second = cli(demo_project, "run", "demo", "-d", "2024-02-01")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "starting the local Prefect server" not in second.stderr and "automation" not in second.stderr
    assert record_of(prefect_home) == record  # same pid, port, url: reused
    assert server_pids(prefect_home) == [record.pid]
    for result in (first, second):
        assert "Traceback" not in result.stderr and "CancelledError" not in result.stderr

    ids = [re.search(r"flow run: (\S+)", r.stdout).group(1) for r in (first, second)]
    assert flow_runs(record.url, ids) == {ids[0]: "COMPLETED", ids[1]: "COMPLETED"}

    status = cli(demo_project, "server", "status")
    assert status.returncode == 0, status.stderr
    text = " ".join(status.stdout.split())
    assert f"running at {record.ui_url}" in text and f"pid: {record.pid}" in text
    assert f"log: {record.log}" in text and "stops after 30 min idle" in text

    stop = cli(demo_project, "server", "stop")
    assert stop.returncode == 0 and f"pid {record.pid}" in stop.stdout, stop.stdout + stop.stderr
    assert not server_pids(prefect_home) and record_of(prefect_home) is None
    assert "not running" in cli(demo_project, "server", "status").stdout


def test_concurrent_starts_give_one_server_that_stops_itself_once_idle(prefect_home):
    """(b) two processes asking at once, over a stale record, get one server; (c) it stays while a
    command uses it, then stops by itself after the idle timeout (3 s here)."""
    prefect_home.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(dead.stdout), "supervisor_pid": int(dead.stdout), "port": 9, "url": "http://127.0.0.1:9/api",
             "log": "x", "started_at": "2020-01-01T00:00:00+00:00", "idle_minutes": 30}
    (prefect_home / "mage_dbt_server.json").write_text(json.dumps(stale))
    idle_seconds = 3

    clients = start_clients(2, env={"MAGE_DBT_LOCAL_SERVER_IDLE_MINUTES": str(idle_seconds / 60)})
    records = [record_from(proc) for proc in clients]
    assert records[0] == records[1], records
    record = records[0]
    assert record["pid"] != stale["pid"] and server_pids(prefect_home) == [record["pid"]]
    assert local_server.healthy(record["url"])

    # In use (the clients hold the clients lock) for twice the idle timeout: still there.
    started = time.monotonic()
    while time.monotonic() - started < 2 * idle_seconds:
        assert local_server.healthy(record["url"]) and server_pids(prefect_home) == [record["pid"]]
        time.sleep(0.2)  # polling interval over the observed window
    errors = [finish(proc) for proc in clients]
    assert sum("starting the local Prefect server" in e for e in errors) == 1, errors

    wait_until(lambda: not server_pids(prefect_home) and not local_server._alive(record["supervisor_pid"]),
               90, "the idle server and its supervisor to stop")
    assert record_of(prefect_home) is None
    assert f"idle for {idle_seconds / 60:g} min" in (prefect_home / "mage_dbt_server.log").read_text()


def test_a_server_that_cannot_start_gives_one_line_and_exit_2(demo_project, prefect_home):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli(demo_project, "run", "demo", "-d", "2024-02-01",
                     env={"MAGE_DBT_LOCAL_SERVER_PORT": str(port)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(result.stderr.strip().splitlines()) == 2, result.stderr  # + the "starting" line
    assert f"port {port} (MAGE_DBT_LOCAL_SERVER_PORT) is already in use" in errors[0]
    assert str(prefect_home / "mage_dbt_server.log") in errors[0] and "PREFECT_API_URL" in errors[0]
    assert not server_pids(prefect_home) and record_of(prefect_home) is None


def test_an_unusable_prefect_home_gives_one_line_and_exit_2(demo_project, prefect_home, tmp_path):
    not_a_folder = tmp_path / "a_file"
    not_a_folder.write_text("")
    result = cli(demo_project, "run", "demo", "-d", "2024-02-01", env={"PREFECT_HOME": str(not_a_folder / "home")})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: cannot start the local Prefect server in PREFECT_HOME {not_a_folder / 'home'}: Not a directory "
        "— set PREFECT_HOME to a writable folder, or PREFECT_API_URL to a running Prefect server"
    ]
