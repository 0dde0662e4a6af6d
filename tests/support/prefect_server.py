"""Start and stop a real Prefect server for tests and benchmarks (readiness by polling /api/health)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PrefectServer:
    process: subprocess.Popen
    url: str
    home: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            "PREFECT_API_URL": f"{self.url}/api",
            "PREFECT_UI_API_URL": f"{self.url}/api",
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def start(home: Path, port: int | None = None, timeout: float = 120.0) -> PrefectServer:
    """Start `prefect server start` with its own PREFECT_HOME (SQLite) and wait until it is healthy."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"{url}/api",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Prefect server exited early, see {home / 'server.log'}")
        try:
            with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:
                if response.status == 200:
                    return PrefectServer(process=process, url=url, home=home)
        except OSError:
            time.sleep(0.25)  # polling interval while waiting for readiness, not synchronization
    process.kill()
    raise RuntimeError(f"Prefect server did not become healthy in {timeout}s, see {home / 'server.log'}")
