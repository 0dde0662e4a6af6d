"""Per-block progress of a pipeline run: a sink the run reports to, for the CLI's live display.

`run_and_report` (mage_dbt.flows) wraps the run's task-run reporter in a `ProgressReporter`, which
passes every call on unchanged and also tells the sink of the current context (`use_block_sink`)
when a block starts, ends or is skipped. The CLI sets a sink that draws a live display (or prints a
line per block when stderr is not a terminal); runs started by Prefect deployments, workers or
backfills report to the `NullBlockSink`, so nothing changes for them.

Sinks are called from dbt's worker threads: implementations must be thread-safe.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from typing import Any, Iterator, Protocol


STYLE = {"success": "green", "completed": "green", "failed": "bold red", "crashed": "bold red",
         "skipped": "yellow", "cancelled": "yellow"}


def status_line(status: str, label: str, seconds: float, message: str | None = None) -> str:
    """One finished block (`run`) or interval (`backfill`), in one format (rich markup)."""
    from rich.markup import escape

    line = f"[{STYLE.get(status, '')}]{status:<9}[/] {escape(label)} ({seconds:.1f}s)"
    if message and status not in ("success", "completed"):
        line += f": {escape(' '.join(message.split())[:300])}"
    return line


class BlockSink(Protocol):
    def run_started(self, label: str, total: int) -> None: ...

    def block_started(self, name: str, kind: str) -> None: ...

    def block_finished(self, name: str, status: str, seconds: float, message: str | None = None) -> None: ...

    def run_ended(self, label: str) -> None: ...


class NullBlockSink:
    """Reports nowhere."""

    def run_started(self, label: str, total: int) -> None:
        pass

    def block_started(self, name: str, kind: str) -> None:
        pass

    def block_finished(self, name: str, status: str, seconds: float, message: str | None = None) -> None:
        pass

    def run_ended(self, label: str) -> None:
        pass


_SINK: contextvars.ContextVar[BlockSink] = contextvars.ContextVar("mage_dbt_block_sink", default=NullBlockSink())


def current_block_sink() -> BlockSink:
    return _SINK.get()


@contextlib.contextmanager
def use_block_sink(sink: BlockSink) -> Iterator[BlockSink]:
    """Report the pipeline runs of this block (in this thread and its flows) to `sink`."""
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)


class ProgressReporter:
    """A task-run reporter (or None) that also tells a `BlockSink` about block starts and ends."""

    def __init__(self, inner: Any, sink: BlockSink) -> None:
        self.inner = inner
        self.sink = sink
        self._started: dict[str, float] = {}
        self._lock = threading.Lock()

    def started(self, block: str, *, kind: str, upstream: tuple[str, ...] = (), tags: tuple[str, ...] = (),
                retries: int = 0, retrying: bool = False) -> Any:
        with self._lock:
            self._started.setdefault(block, time.perf_counter())
        self.sink.block_started(block, kind)
        return self.inner.started(block, kind=kind, upstream=upstream, tags=tags, retries=retries,
                                  retrying=retrying) if self.inner else None

    def awaiting_retry(self, block: str, *, delay: float, message: str | None = None) -> None:
        if self.inner:
            self.inner.awaiting_retry(block, delay=delay, message=message)

    def finished(self, block: str, *, ok: bool, message: str | None = None, name: str | None = None,
                 skipped: bool = False) -> None:
        with self._lock:
            began = self._started.pop(block, None)
        seconds = time.perf_counter() - began if began is not None else 0.0
        status = ("cancelled" if name == "Cancelled" else "skipped") if skipped else "success" if ok else "failed"
        # Ctrl-C: the CLI prints the one `interrupted` line; the cancelled blocks' lines carry no reason.
        self.sink.block_finished(block, status, seconds, None if status == "cancelled" else message)
        if self.inner:
            self.inner.finished(block, ok=ok, message=message, name=name, skipped=skipped)

    def skipped(self, block: str, *, kind: str, reason: str, tags: tuple[str, ...] = (),
                state_name: str | None = None) -> None:
        cancelled = state_name == "Cancelled"
        with self._lock:
            self._started.pop(block, None)  # ended: not `unfinished` any more
        self.sink.block_finished(block, "cancelled" if cancelled else "skipped", 0.0, None if cancelled else reason)
        if self.inner:
            extra = {"state_name": state_name} if state_name else {}
            self.inner.skipped(block, kind=kind, reason=reason, tags=tags, **extra)

    def reused(self, block: str, *, kind: str, message: str, upstream: tuple[str, ...] = ()) -> None:
        self.sink.block_finished(block, "success", 0.0, None)
        if self.inner:
            self.inner.reused(block, kind=kind, message=message, upstream=upstream)

    def batch_started(self, block: str, label: str) -> None:
        if self.inner:
            self.inner.batch_started(block, label)

    def batch_finished(self, block: str, label: str, **outcome: Any) -> None:
        if self.inner:
            self.inner.batch_finished(block, label, **outcome)

    def unfinished(self) -> list[str]:
        """Blocks started and not ended (the task-run reporter's view when there is one)."""
        if self.inner:
            return self.inner.unfinished()
        with self._lock:
            return list(self._started)

    def log(self, block: str, message: str, level: int = 20) -> None:
        if self.inner:
            self.inner.log(block, message, level)

    def close(self) -> None:
        if self.inner:
            self.inner.close()


def with_block_progress(reporter: Any, label: str, total: int) -> Any:
    """`reporter` unchanged when no sink listens; otherwise wrapped, with the run announced."""
    sink = current_block_sink()
    if isinstance(sink, NullBlockSink):
        return reporter
    sink.run_started(label, total)
    return ProgressReporter(reporter, sink)
