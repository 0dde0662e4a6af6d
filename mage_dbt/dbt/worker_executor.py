"""The worker executor: node groups run by a dbt worker process, node events streamed back.

`mage-dbt run` calls `prestart_worker()` first thing, as soon as the project's settings say the
run uses the worker and before it connects to Prefect: the worker (`mage_dbt.dbt.worker_process`)
imports dbt while this process imports Prefect and creates the flow run, and `preload_worker()`
hands it the run's manifest cache entry as soon as the pre-flight knows it (the worker then warms
up what dbt's first invocation pays before its first node). `WorkerDbtExecutor` implements
`DbtExecutor` by forwarding: it sends the node group, then relays the worker's
`started` / `finished` / batch messages to the listener in this process's main thread, so
Prefect reporting never competes with dbt's threads for one GIL. Elsewhere (a flow run in a
Prefect worker, a test) the worker starts at the first dbt group.

The worker is this process's one dbt process (as dbt is per process in-process): `shared_worker()`
holds it, a dead one is replaced at the next group, and it is told to exit when this process
ends. A worker that dies during a group does not hang the run: every node it did not report ends
failed with "dbt worker process exited with signal 9 (SIGKILL) while running build of N nodes",
and so does the run. Ctrl-C and timeouts are forwarded to the worker as one SIGINT (dbt cancels
its queries there); a worker that does not stop within `stop_grace_seconds` is killed.

Still in this process, and so still importing dbt here: the drift check's `dbt compile` when its
disk cache misses (a new revision of the project), dbt's selector for a selection not remembered
yet (`mage_dbt.dbt.selection_cache`) and profiles.yml with Jinja beyond env_var/var
(`mage_dbt.warehouse.profile_light`). A repeated run of an unchanged project imports none of it.

The in-process executor (`mage_dbt.dbt.executor`) remains the choice where no start-up is to be
hidden or dbt already has a process of its own: tests, backfill worker processes, library use.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any, Sequence

from mage_dbt.context import RunContext
from mage_dbt.dbt.child_stop import forwarding_stops
from mage_dbt.dbt.invocation import InvocationOutcome, NodeListener, NodeResult, count_invocation
from mage_dbt.dbt.manifest import LoadedManifest

_LOCK = threading.Lock()
_WORKER: "DbtWorker | None" = None


class DbtWorker:
    """One dbt worker process and the two pipes to it."""

    def __init__(self, process: subprocess.Popen, requests: Connection, replies: Connection) -> None:
        self.process = process
        self.requests = requests
        self.replies = replies

    @classmethod
    def start(cls) -> "DbtWorker":
        to_worker, from_parent = os.pipe()[::-1]  # (write end, read end)
        to_parent, from_worker = os.pipe()[::-1]
        process = subprocess.Popen(
            [sys.executable, "-m", "mage_dbt.dbt.worker_process", str(from_parent), str(to_parent), str(os.getpid())],
            pass_fds=(from_parent, to_parent), stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches it once, forwarded by the executor
        )
        os.close(from_parent)
        os.close(to_parent)
        return cls(process, Connection(to_worker, readable=False), Connection(from_worker, writable=False))

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, message: tuple) -> None:
        self.requests.send(message)

    def exit_reason(self) -> str:
        """How the process ended, in words ("exited with signal 9 (SIGKILL)")."""
        try:
            code = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if code < 0:
            return f"exited with signal {-code} ({signal.Signals(-code).name})"
        return f"exited with code {code}"

    def close(self, timeout: float = 5.0) -> None:
        if self.alive:
            try:
                self.send(("exit",))
                self.process.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        for connection in (self.requests, self.replies):
            connection.close()


def shared_worker() -> DbtWorker:
    """This process's dbt worker, started now when there is none (or it died)."""
    global _WORKER
    with _LOCK:
        if _WORKER is None or not _WORKER.alive:
            if _WORKER is not None:
                _WORKER.close()
            else:
                atexit.register(_close_shared)
            _WORKER = DbtWorker.start()
        return _WORKER


def prestart_worker() -> DbtWorker:
    """Start the dbt worker now, so its dbt import overlaps with whatever this process does next."""
    return shared_worker()


def preload_worker(loaded: LoadedManifest) -> None:
    """Have the worker load this manifest while this process goes on (the run will use it)."""
    try:
        shared_worker().send(("preload", loaded.ref, loaded.key, str(loaded.cache_folder)))
    except OSError:  # it died already: the run's first dbt group starts another and says why if it dies again
        pass


def _close_shared() -> None:
    global _WORKER
    with _LOCK:
        if _WORKER is not None:
            _WORKER.close()
            _WORKER = None


class WorkerDbtExecutor:
    """Runs a node group in the dbt worker process, relaying its node events to the listener."""

    def __init__(self, *, stop_grace_seconds: float = 60.0) -> None:
        self._grace = stop_grace_seconds

    def run_nodes(
        self,
        loaded: LoadedManifest,
        unique_ids: Sequence[str],
        *,
        context: RunContext,
        listener: NodeListener,
        command: str = "build",
        full_refresh: bool = False,
    ) -> InvocationOutcome:
        worker = shared_worker()
        portable = replace(context, vars=dict(context.vars), retry_batches=dict(context.retry_batches))
        request = {"ref": loaded.ref, "key": loaded.key, "folder": str(loaded.cache_folder), "ids": list(unique_ids),
                   "context": portable, "command": command, "full_refresh": full_refresh}
        finished: dict[str, NodeResult] = {}
        try:
            worker.send(("run", request))
            reply = self._relay(worker, listener, finished)
        except (EOFError, OSError):  # the worker died: end what it did not report, never hang
            problem = f"dbt worker process {worker.exit_reason()} while running {command} of {len(unique_ids)} nodes"
            for unique_id in unique_ids:
                if unique_id not in finished:
                    finished[unique_id] = NodeResult(unique_id=unique_id, status="error", message=problem)
                    listener.node_finished(finished[unique_id])
            return InvocationOutcome(success=False, results=finished, error=problem)
        count_invocation()  # the worker logged it; this process's run counts it
        if reply[0] == "error":
            raise RuntimeError(f"the dbt worker process failed: {reply[1]}\n{reply[2]}")
        return reply[1]

    def _relay(self, worker: DbtWorker, listener: NodeListener, finished: dict[str, NodeResult]) -> tuple:
        """Hand the worker's messages to the listener until its reply. Ctrl-C and time limits reach
        the worker as one SIGINT (`mage_dbt.dbt.child_stop`) and never cut a listener call."""
        with forwarding_stops(worker.process, self._grace) as stop:
            while True:
                try:
                    message = worker.replies.recv()
                    kind = message[0]
                    if kind == "started":
                        listener.node_started(message[1])
                    elif kind == "finished":
                        finished[message[1].unique_id] = message[1]
                        listener.node_finished(message[1])
                    elif kind in ("batch_started", "batch_finished"):
                        _batch_call(listener, message)
                    else:
                        return message
                except KeyboardInterrupt:  # Python's own SIGINT handling (no interruptible()): stop dbt there
                    stop.request()


def _batch_call(listener: Any, message: tuple) -> None:
    callback = getattr(listener, message[0], None)
    if callback is None:
        return
    if message[0] == "batch_started":
        callback(message[1], message[2])
    else:
        callback(message[1], message[2], **message[3])
