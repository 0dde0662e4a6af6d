"""Ctrl-C and time limits while a dbt child process runs a node group: forwarded once, no event lost.

The executors that run dbt in another process (`worker_executor`, `json_log_executor`) relay its
node events to the listener in this process's main thread. A signal handler that raises
KeyboardInterrupt (`mage_dbt.runs.interrupts`) lands between any two bytecodes of that relay: in
the middle of a listener call (a block's result recorded but its task run left Running for good)
or just after a message was read (the event lost). So while `forwarding_stops(process)` is active,
those handlers call `request_stop()` instead of raising: the child gets one SIGINT (dbt cancels
its queries and still reports every node), and a watchdog kills it when the group has not ended
`grace` seconds later. The relay never sees an exception and reads the child's events to the end.

Where no such handler is installed (a run inside a Prefect worker keeps Python's own SIGINT
handling), a relay that catches KeyboardInterrupt calls `ChildStop.request()` itself.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from typing import Iterator

_ACTIVE: list["ChildStop"] = []


class ChildStop:
    """Stops one child process's node group: one SIGINT, then SIGKILL after the grace period."""

    def __init__(self, process: subprocess.Popen, grace: float) -> None:
        self._process = process
        self._grace = grace
        self.requested = False
        self._wake = threading.Event()  # a stop was requested, or the group is over
        self._done = threading.Event()  # the group is over
        self._watchdog = threading.Thread(target=self._watch, name="mage-dbt-child-stop", daemon=True)
        self._watchdog.start()

    def request(self) -> None:
        """Send the child one SIGINT and arm the watchdog. Safe inside a signal handler: it takes no
        lock the interrupted main thread could be holding."""
        if self.requested:
            return
        self.requested = True
        try:
            self._process.send_signal(signal.SIGINT)
        except OSError:  # it is gone already: the relay sees its pipe close
            pass
        self._wake.set()

    def finish(self) -> None:
        self._done.set()
        self._wake.set()

    def _watch(self) -> None:
        self._wake.wait()
        if not self._done.is_set() and not self._done.wait(self._grace):
            self._process.kill()  # dbt did not stop in time: end it (the relay then sees its pipe close)


def request_stop() -> bool:
    """Forward a stop to the child whose events are being relayed; False when there is none (the
    caller then raises KeyboardInterrupt as usual)."""
    if not _ACTIVE:
        return False
    _ACTIVE[-1].request()
    return True


@contextlib.contextmanager
def forwarding_stops(process: subprocess.Popen, grace: float) -> Iterator[ChildStop]:
    """While the block runs, Ctrl-C and passed time limits stop `process` instead of raising here."""
    stop = ChildStop(process, grace)
    _ACTIVE.append(stop)
    try:
        yield stop
    finally:
        _ACTIVE.remove(stop)  # first: a signal from now on raises as usual and never touches `stop`
        stop.finish()
