"""What `run` shows while it runs: on a terminal (a real pseudo-terminal here) a live display of the
blocks, redrawn in place and gone at the end; otherwise one plain line per finished block.
Block logs look the same in both (`HH:MM:SS block: message`)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time

from tests.conftest import BIN, cli
from tests.support.runs import flow_run_id

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d load_orders: \d+ order status changes on 2024-02-01$", re.M)


def run_in_terminal(project, *args: str, columns: int = 80, deadline: float = 300) -> tuple[int, str]:
    """Run the CLI with stdout and stderr on a pseudo-terminal of `columns`; return (exit code, output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm-256color"}
    env.pop("MAGE_DBT_DATA_DIR", None)
    process = subprocess.Popen([str(BIN / "mage-dbt"), *args], cwd=project, env=env,
                               stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    until = time.monotonic() + deadline
    try:
        while time.monotonic() < until:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the terminal closed: the process ended
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        else:
            process.kill()
            raise AssertionError("the run did not end in time:\n" + b"".join(chunks).decode(errors="replace")[-3000:])
        return process.wait(timeout=60), b"".join(chunks).decode(errors="replace")
    finally:
        os.close(master)


def test_run_shows_live_progress_on_a_terminal(demo_project):
    code, raw = run_in_terminal(demo_project, "run", "demo", "-d", "2024-02-01")
    text = ANSI.sub("", raw).replace("\r\n", "\n")
    assert code == 0, text[-3000:]
    # Redrawn in place: rich moves the cursor up over the display it drew before.
    assert "\x1b[2K" in raw or "\x1b[1A" in raw, raw[-2000:]
    frames = re.findall(r"demo 2024-02-01 · (\d+)/74 blocks · 0 failed · 0 skipped", text)
    assert frames and len({int(f) for f in frames}) >= 2, text[-3000:]  # the count moved
    assert "running: " in text and "preparing demo for 2024-02-01" in text
    assert "demo 2024-02-01: 74/74 blocks: 74 success, 0 failed, 0 skipped (0:00:" in text
    # (above the display: rich starts the line with a carriage return)
    assert re.search(LOG_LINE.pattern.strip("^$"), text), text[-3000:]
    assert "flow run: " in text
    lines = [l for l in text.splitlines() if l.strip()]
    too_wide = [l for l in lines if len(l) > 80 and "\r" not in l]
    assert not too_wide, too_wide


def test_run_prints_a_line_per_block_when_not_on_a_terminal(demo_project):
    result = cli(demo_project, "run", "demo", "-d", "2024-02-01")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((demo_project / ".mage_dbt" / "runs" / flow_run_id(result.stdout) / "summary.json").read_text())
    finished = re.findall(r"^success   (\S+) \(\d+\.\ds\)$", result.stderr, re.M)
    assert sorted(finished) == sorted(summary["results"]), result.stderr[-3000:]
    assert "\x1b[" not in result.stderr and "blocks ·" not in result.stderr  # no redraws, no live display
    assert LOG_LINE.search(result.stderr), result.stderr[-3000:]
