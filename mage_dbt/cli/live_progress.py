"""What the CLI shows while a pipeline runs: a live display on a terminal, a line per block otherwise.

`block_progress(console, title)` wraps a command's work (run, retry, full-refresh, rebuild):

- on a terminal (the console's `is_terminal`), a rich live display on stderr: a spinner with what
  is being prepared (Prefect flow run, dbt manifest) until the first block, then the run's label,
  blocks done of total, failed and skipped counts, elapsed time, a bar and the blocks running now,
  cut to the terminal's width. A block that fails or is skipped gets a line above the display as
  it happens; the display disappears at the end, leaving one line per run.
- otherwise (pipes, CI logs, tests) one plain line per finished block, no redraws.

Block log records (`mage_dbt.block.<name>`, what Python blocks log) are printed above the display
in one format, `HH:MM:SS block: message`, the same for `run` and `backfill` (`block_logs`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Iterator

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from mage_dbt.runs.block_progress import status_line, use_block_sink

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


class PlainBlocks:
    """One line per finished block (stderr is not a terminal)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def run_started(self, label: str, total: int) -> None:
        pass

    def block_started(self, name: str, kind: str) -> None:
        pass

    def block_finished(self, name: str, status: str, seconds: float, message: str | None = None) -> None:
        self.console.print(status_line(status, name, seconds, message), soft_wrap=True, highlight=False)

    def run_ended(self, label: str) -> None:
        pass


class LiveBlocks:
    """The live display's state and its rendering (redrawn by rich.live several times a second)."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.label: str | None = None
        self.total = self.done = self.failed = self.skipped = 0
        self.running: dict[str, float] = {}
        self.began = self.run_began = time.monotonic()
        self._lock = threading.Lock()

    # -- sink ---------------------------------------------------------------------------------
    def run_started(self, label: str, total: int) -> None:
        with self._lock:
            self.label, self.total = label, total
            self.done = self.failed = self.skipped = 0
            self.running.clear()
            self.run_began = time.monotonic()

    def block_started(self, name: str, kind: str) -> None:
        with self._lock:
            self.running.setdefault(name, time.monotonic())

    def block_finished(self, name: str, status: str, seconds: float, message: str | None = None) -> None:
        with self._lock:
            self.running.pop(name, None)
            if status == "success":
                self.done += 1
            elif status == "skipped":
                self.skipped += 1
            else:
                self.failed += 1
        if status != "success":  # kept above the display: what went wrong, as it happens
            self.console.print(status_line(status, name, seconds, message), soft_wrap=True, highlight=False)

    def run_ended(self, label: str) -> None:
        with self._lock:
            finished = self.done + self.failed + self.skipped
            text = (f"{label}: {finished}/{self.total} blocks: {self.done} success, {self.failed} failed, "
                    f"{self.skipped} skipped ({_clock(time.monotonic() - self.run_began)})")
            self.label = None
        self.console.print(escape(text), highlight=False)

    # -- rendering ----------------------------------------------------------------------------
    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = max(20, options.max_width)
        now = time.monotonic()
        spin = SPINNER[int(now * 10) % len(SPINNER)]
        with self._lock:
            if self.label is None:
                yield Text(f"{spin} {self.title} · {_clock(now - self.began)}", no_wrap=True, overflow="ellipsis")
                return
            finished = self.done + self.failed + self.skipped
            head = Text(f"{spin} {self.label} · {finished}/{self.total} blocks · ", no_wrap=True, overflow="ellipsis")
            head.append(f"{self.failed} failed", style="bold red" if self.failed else "")
            head.append(f" · {self.skipped} skipped · {_clock(now - self.run_began)}")
            running = sorted(self.running, key=self.running.get)  # type: ignore[arg-type]
            total, done = max(self.total, 1), finished
        bar_width = min(width - 5, 60)
        filled = min(bar_width, round(bar_width * done / total))
        bar = Text("━" * filled, style="green", no_wrap=True)
        bar.append("━" * (bar_width - filled), style="grey23")
        bar.append(f" {100 * done // total}%")
        shown = f"running: {', '.join(running)}" if running else "running: -"
        yield Group(head, bar, Text(shown, no_wrap=True, overflow="ellipsis", style="dim"))


class BlockLogHandler(logging.Handler):
    """Python blocks' log records, printed through the console (above a live display)."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            block = record.name.rsplit(".", 1)[-1]
            stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
            style = "bold red" if record.levelno >= logging.ERROR else "yellow" if record.levelno >= logging.WARNING else "dim"
            self.console.print(f"[{style}]{stamp}[/] {escape(block)}: {escape(record.getMessage())}",
                               soft_wrap=True, highlight=False)
        except Exception:  # logging must never fail a block
            self.handleError(record)


@contextlib.contextmanager
def block_logs(console: Console) -> Iterator[None]:
    """Block log records go to `console` in one format, not through Prefect's console handler."""
    logger = logging.getLogger("mage_dbt.block")
    handler = BlockLogHandler(console)
    previous = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = previous


@contextlib.contextmanager
def block_progress(console: Console, title: str) -> Iterator[None]:
    """Show the pipeline runs inside this block: live on a terminal, plain lines otherwise."""
    with block_logs(console):
        if not console.is_terminal:
            with use_block_sink(PlainBlocks(console)):
                yield
            return
        display = LiveBlocks(console, title)
        with Live(display, console=console, refresh_per_second=8, transient=True), use_block_sink(display):
            yield
