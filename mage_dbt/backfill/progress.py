"""Backfill progress: a sink the backfill reports to, and the live rich bar the CLI shows.

The backfill flow reports every interval start and end to the sink of the current context
(`use_sink`), so the same flow runs quietly from a Prefect deployment and with a live bar
(done / failed / remaining, elapsed, ETA) from `mage-dbt backfill`. On a terminal the bar redraws in
place; otherwise (logs, CI) each finished interval is one plain line.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Protocol

from rich.console import Console

from mage_dbt.runs.block_progress import status_line
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

STYLE = {"completed": "green", "failed": "bold red", "crashed": "bold red", "cancelled": "yellow"}


class ProgressSink(Protocol):
    def begin(self, backfill_id: str, total: int, already_done: int, todo: int) -> None: ...

    def interval_started(self, label: str) -> None: ...

    def interval_finished(self, label: str, status: str, seconds: float, message: str | None = None) -> None: ...

    def phase_started(self, label: str) -> None: ...

    def phase_finished(self, label: str, status: str, seconds: float, message: str | None = None) -> None: ...

    def end(self) -> None: ...


class NullSink:
    """Reports nowhere (a backfill started from a Prefect deployment logs to Prefect instead)."""

    def begin(self, backfill_id: str, total: int, already_done: int, todo: int) -> None:
        pass

    def interval_started(self, label: str) -> None:
        pass

    def interval_finished(self, label: str, status: str, seconds: float, message: str | None = None) -> None:
        pass

    def phase_started(self, label: str) -> None:
        pass

    def phase_finished(self, label: str, status: str, seconds: float, message: str | None = None) -> None:
        pass

    def end(self) -> None:
        pass


class RichProgress:
    """A live bar over the intervals still to run, plus one line per finished interval."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.done = self.failed = self.cancelled = 0
        self.todo = 0
        self.running: list[str] = []
        self._progress: Progress | None = None
        self._task = None

    def begin(self, backfill_id: str, total: int, already_done: int, todo: int) -> None:
        self.todo = todo
        if already_done:
            self.console.print(f"{already_done} of {total} intervals already completed: skipped")
        # Sized to the terminal: everything but the bar takes about 62 columns (80-column terminals
        # keep a short bar; nothing is cut).
        bar_width = max(6, min(40, self.console.width - 64))
        self._progress = Progress(
            TextColumn("[bold]backfill"),
            BarColumn(bar_width=bar_width),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed[/] · {task.fields[running]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._task = self._progress.add_task(backfill_id, total=todo, done=0, failed=0, remaining=todo, running="")
        self._progress.start()

    def interval_started(self, label: str) -> None:
        self.running.append(label)
        self._refresh()

    def interval_finished(self, label: str, status: str, seconds: float, message: str | None = None) -> None:
        if status == "completed":
            self.done += 1
        elif status == "cancelled":  # Ctrl-C: stopped, not failed
            self.cancelled += 1
        else:
            self.failed += 1
        self._ended(label, status, seconds, message)
        if self._progress is not None:
            self._progress.advance(self._task)
        self._refresh()

    def phase_started(self, label: str) -> None:
        """A step of the backfill that is no interval (the microbatch phase): shown as running, not counted."""
        self.interval_started(label)

    def phase_finished(self, label: str, status: str, seconds: float, message: str | None = None) -> None:
        self._ended(label, status, seconds, message)
        self._refresh()

    def _ended(self, label: str, status: str, seconds: float, message: str | None) -> None:
        """No longer running; its line printed (the same line as a run's blocks)."""
        if label in self.running:
            self.running.remove(label)
        if self._progress is not None:
            self._progress.console.print(status_line(status, label, seconds, message), highlight=False)

    def _refresh(self) -> None:
        if self._progress is not None and self._task is not None:
            running = f"running {self.running[0]}" if self.running else "running -"
            if len(self.running) > 1:
                running += f" +{len(self.running) - 1}"
            self._progress.update(
                self._task, done=self.done, failed=self.failed,
                remaining=self.todo - self.done - self.failed - self.cancelled, running=running,
            )

    def end(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


_SINK: contextvars.ContextVar[ProgressSink] = contextvars.ContextVar("mage_dbt_backfill_sink", default=NullSink())


def current_sink() -> ProgressSink:
    return _SINK.get()


@contextlib.contextmanager
def use_sink(sink: ProgressSink) -> Iterator[ProgressSink]:
    """Report the backfills run inside this block to `sink`."""
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)
