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
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

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
