"""The dbt worker process: `python -m mage_dbt.dbt.worker_process REQUESTS_FD REPLIES_FD`.

Started by `mage_dbt.dbt.worker_executor` (first thing in `mage-dbt run`), it imports dbt at once,
so dbt's import overlaps with the parent's Prefect import and flow-run creation, then serves
requests from the parent over a pipe (pickled tuples, `multiprocessing.connection`), one at a time:

- `("preload", ref, key, folder)`: read that manifest cache entry, unpickle dbt's Manifest and
  warm up what dbt's first invocation would pay before its first node (`warm_up`);
- `("run", request)`: run a node group with the in-process executor (`InProcessDbtExecutor`)
  here, streaming the listener's calls back as `("started", id)`, `("finished", NodeResult)`,
  `("batch_started", ...)`, `("batch_finished", ...)`, then `("done", InvocationOutcome)` (or
  `("error", text)` when the executor raised);
- `("exit",)`, or the parent's end of the pipe closing: the worker exits at once (`exit_now`).

dbt's process-global state, its threads and its callbacks live here; the parent only relays
events to Prefect. SIGINT is ignored while idle and, during a run, stops dbt as Ctrl-C would
in-process (the parent forwards it: the worker runs in its own session). After every run the
worker closes dbt-duckdb's database, so the parent's blocks can open the file.
"""

from __future__ import annotations

import signal
import sys
import threading
import traceback
from dataclasses import replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any


class PipeListener:
    """A NodeListener that sends every call to the parent (dbt calls it from its threads)."""

    def __init__(self, replies: Connection) -> None:
        self._replies = replies
        self._lock = threading.Lock()

    def _send(self, message: tuple) -> None:
        with self._lock:
            self._replies.send(message)

    def node_started(self, unique_id: str) -> None:
        self._send(("started", unique_id))

    def node_finished(self, result: Any) -> None:
        self._send(("finished", result))

    def batch_started(self, unique_id: str, label: str) -> None:
        self._send(("batch_started", unique_id, label))

    def batch_finished(self, unique_id: str, label: str, **kwargs: Any) -> None:
        self._send(("batch_finished", unique_id, label, kwargs))


class Worker:
    """The request loop; manifests stay loaded between requests (one per cache entry)."""

    def __init__(self, requests: Connection, replies: Connection) -> None:
        self.requests = requests
        self.replies = replies
        self.manifests: dict[Path, Any] = {}

    def manifest(self, ref: Any, key: str, folder: str) -> Any:
        from mage_dbt.dbt.manifest import cached_variant

        path = Path(folder)
        loaded = self.manifests.get(path)
        if loaded is None:
            loaded = cached_variant(ref, key, path)
            if loaded is None:
                raise RuntimeError(f"the manifest cache entry {folder} is gone or incomplete")
            self.manifests[path] = loaded
        return loaded

    def serve(self) -> int:
        while True:
            try:
                message = self.requests.recv()
            except (EOFError, OSError):  # the parent is gone
                return 0
            kind = message[0]
            if kind == "exit":
                return 0
            if kind == "preload":
                try:
                    warm_up(self.manifest(*message[1:]).dbt_manifest.metadata.adapter_type)
                except Exception:  # noqa: BLE001 - the run request will say it again, with the parent listening
                    pass
            elif kind == "run":
                self.run(message[1])

    def run(self, request: dict[str, Any]) -> None:
        from mage_dbt.dbt.executor import InProcessDbtExecutor

        listener = PipeListener(self.replies)
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # the parent's Ctrl-C / timeout
        try:
            loaded = self.manifest(request["ref"], request["key"], request["folder"])
            outcome = InProcessDbtExecutor().run_nodes(
                loaded, request["ids"], context=request["context"], listener=listener,
                command=request["command"], full_refresh=request["full_refresh"])
            reply: tuple = ("done", replace(outcome, raw=None))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which ends the nodes
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            reply = ("error", text, traceback.format_exc())
        finally:
            signal.signal(signal.SIGINT, previous)
        release_duckdb()  # before the reply: the parent's next block may open the file at once
        listener._send(reply)


def warm_up(adapter_type: str | None) -> None:
    """Pay now, while the parent still creates the flow run, what dbt's first invocation in a
    process pays once before its first node: the imports of dbt's tasks, of agate and of the
    adapter plugin; `inspect`'s module-by-file cache (creating the adapter calls `inspect.stack()`
    for each behavior flag, and the first call maps every loaded module's file); the JSON schemas
    that validate the project, the runtime configuration and the profile's credentials (built on
    first use, then cached by dbt). Best effort: whatever fails here, the run does again and reports."""
    import importlib
    import inspect

    import dbt.task.build  # noqa: F401 - dbt imports its tasks (run, seed, test, snapshot) at the first invocation
    import dbt_common.clients.agate_helper  # noqa: F401 - agate and babel, for the first result table
    from dbt.contracts.project import Configuration, Project

    if adapter_type:
        plugin = importlib.import_module(f"dbt.adapters.{adapter_type}").Plugin
        plugin.credentials.json_schema()
    Project.json_schema()
    Configuration.json_schema()
    inspect.stack()


def release_duckdb() -> None:
    """Close dbt-duckdb's database. It keeps it open for the life of the process (a class
    attribute); in-process that is harmless, but a worker holding it would lock the file against
    the parent's SQL and Python blocks (DuckDB: one writing process per file)."""
    module = sys.modules.get("dbt.adapters.duckdb.connections")
    if module is None:
        return
    from dbt.adapters.factory import reset_adapters

    reset_adapters()  # closes every thread's connection (each a DuckDB cursor holding the database)
    manager = module.DuckDBConnectionManager
    with manager._LOCK:
        environment, manager._ENV = manager._ENV, None
    if environment is not None:
        try:
            environment.close()
        except Exception:  # noqa: BLE001 - closing is best effort; the next run opens a new one
            pass


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # idle: the parent decides (see the module docstring)
    requests = Connection(int(argv[0]), writable=False)
    replies = Connection(int(argv[1]), readable=False)
    if len(argv) > 2:  # dbt's artifacts go to the run's folder, not one of this process's own
        from mage_dbt.dbt.manifest import share_artifacts_of

        share_artifacts_of(int(argv[2]))
    import dbt.cli.main  # noqa: F401 - the slow import, while the parent imports Prefect

    from mage_dbt.dbt import executor  # noqa: F401

    return Worker(requests, replies).serve()


def exit_now(code: int) -> None:
    """End the worker without interpreter teardown (about 0.5 s with dbt loaded, and the parent
    waits for it). The exit handlers still run: multiprocessing's unlinks the semaphores dbt
    created (else its resource tracker warns of leaked ones on the user's terminal), logging's
    flushes dbt's log file; dbt's connections were closed after each run."""
    import atexit
    import os

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main(sys.argv[1:]))
