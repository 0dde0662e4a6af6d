"""Ctrl-C (SIGINT) on a run: stop promptly, and say so truthfully.

`interruptible()` wraps a CLI verb that runs flows in this process. The first SIGINT records that
the run was interrupted and raises KeyboardInterrupt in the main thread, as Python's default
handler would: dbt then cancels its open queries and stops (dbtRunner turns the interrupt into a
failed result), a Python block stops where it is. From then on the runner reports every block
that did not finish as Cancelled (not failed), runs nothing more, and the flow run ends Cancelled
(`mage_dbt.flows`, `mage_dbt.backfill.flow`); the CLI prints one `interrupted` line and exits 130.
A second SIGINT while that is being recorded ends the process at once (exit 130): the run left
RUNNING is then marked Crashed by the next command that looks at the history (`run_liveness`).

`interrupted()` is what the runner and the flows ask; outside `interruptible()` it is always False
(runs started by a worker or `serve` keep Prefect's own handling).

While a dbt child process's node events are relayed in the main thread (the worker and json_log
executors), neither Ctrl-C nor a passed time limit raises there: the child is sent one SIGINT
instead (`mage_dbt.dbt.child_stop`), so no listener call is cut in half and no event is lost.

Timeouts (`timeout_seconds` of a run policy) stop work the same way: `time_limits()` arms deadlines
(a block, or a dbt node from the moment dbt starts it) and when the first one passes, SIGALRM raises
`TimeLimitExceeded` — a KeyboardInterrupt — in the main thread. dbt handles it exactly like Ctrl-C
(cancels the open queries, closes its connections, returns a failed result); a Python block stops
where it is. Unlike Ctrl-C it does not mark the run interrupted: the runner ends the blocks TimedOut.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Iterator

from mage_dbt.dbt.child_stop import request_stop

EXIT_CODE = 130
CANCELLED_MESSAGE = "interrupted (Ctrl-C) before it finished"

_INTERRUPTED = threading.Event()
_SECOND_EXITS = threading.Event()


def interrupted() -> bool:
    """Whether this process was interrupted with SIGINT inside `interruptible()`."""
    return _INTERRUPTED.is_set()


def _handler(signum, frame) -> None:
    if _INTERRUPTED.is_set():
        if not _SECOND_EXITS.is_set():
            return  # a backfill worker: its parent forwards Ctrl-C, which the process group already got
        sys.stderr.write("interrupted\n")  # a second Ctrl-C: stop now, record no more
        sys.stderr.flush()
        os._exit(EXIT_CODE)
    _INTERRUPTED.set()
    if request_stop():  # a dbt child process's events are being relayed: stop it, lose none
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible(*, second_exits: bool = True) -> Iterator[None]:
    """Handle SIGINT as described in the module docstring while the block runs (main thread only).

    `second_exits=False` (backfill workers): a second SIGINT is ignored, the first one's cancel goes on."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if second_exits:
        _SECOND_EXITS.set()
    else:
        _SECOND_EXITS.clear()
    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def reset() -> None:
    """Forget an interrupt (tests calling the CLI in-process)."""
    _INTERRUPTED.clear()


class TimeLimitExceeded(KeyboardInterrupt):
    """A time limit passed: raised in the main thread, so dbt stops as on Ctrl-C."""


class TimeLimits:
    """Deadlines of work that runs under the main thread (see the module docstring).

    `arm` and `disarm` may be called from any thread (dbt arms a node from its worker thread when the
    node starts). `expired` maps the keys whose deadline passed to their limit in seconds.
    """

    def __init__(self, enforced: bool) -> None:
        self.enforced = enforced
        self.expired: dict[str, float] = {}
        self._deadlines: dict[str, tuple[float, float]] = {}
        self._lock = threading.RLock()  # re-entrant: the SIGALRM handler runs in the main thread
        self._active = enforced

    def arm(self, key: str, seconds: float | None) -> None:
        if seconds and not self.enforced:
            logging.getLogger("mage_dbt.runner").warning(
                "timeout_seconds of %s is not enforced: the run is not in its process's main thread", key)
        if not seconds or not self._active:
            return
        with self._lock:
            self._deadlines[key] = (time.monotonic() + seconds, seconds)
            self._reschedule()

    def disarm(self, key: str) -> None:
        with self._lock:
            if self._deadlines.pop(key, None) is not None and self._active:
                self._reschedule()

    def _reschedule(self) -> None:
        earliest = min((d for d, _ in self._deadlines.values()), default=None)
        delay = 0.0 if earliest is None else max(earliest - time.monotonic(), 0.001)
        signal.setitimer(signal.ITIMER_REAL, delay)

    def _on_alarm(self, signum, frame) -> None:
        with self._lock:
            if not self._active:
                return
            now = time.monotonic()
            due = {k: s for k, (d, s) in self._deadlines.items() if d <= now}
            if not due:  # a deadline was disarmed or moved after the timer was set
                self._reschedule()
                return
            self.expired.update(due)
            self._active = False
            self._deadlines.clear()
        if request_stop():  # a dbt child process's events are being relayed: stop it, lose none
            return
        names = ", ".join(sorted(due))
        raise TimeLimitExceeded(f"time limit passed: {names}")


@contextlib.contextmanager
def time_limits(needed: bool = True) -> Iterator[TimeLimits]:
    """Deadlines enforced while the block runs; outside the main thread they are not enforced
    (signals reach the main thread only) and `enforced` is False. `needed=False`: nothing will be
    armed, SIGALRM is left alone."""
    if not needed or threading.current_thread() is not threading.main_thread():
        yield TimeLimits(enforced=False)
        return
    limits = TimeLimits(enforced=True)
    previous = signal.signal(signal.SIGALRM, limits._on_alarm)
    try:
        yield limits
    finally:
        with limits._lock:
            limits._active = False
            signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
