"""The one door to dbt: in-process invocations, serialized, logged, and turned into node results.

dbt keeps process-global state (adapter factory, flags), so every dbt call of this process goes
through `invoke_dbt`, which holds a process-wide lock. Each invocation appends one JSON line to
`<data_dir>/logs/dbt_invocations.jsonl` (command, node count, seconds, success) — the invocation
log that tests and `mage-dbt` use to show how many dbt processes a run really cost; a run counts
its own calls with `count_invocations`.

`NodeEvents` turns dbt's event stream (NodeStart / NodeFinished) into calls on a listener, so
Prefect task runs can start when dbt starts a node and end with dbt's own status.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

from mage_dbt.dbt.pruning import rotate_log

LOG = logging.getLogger("mage_dbt.dbt")
_DBT_LOCK = threading.RLock()
# The open `count_invocations` counters of the current context (a run counts its own dbt calls).
_COUNTERS: contextvars.ContextVar[tuple["InvocationCounter", ...]] = contextvars.ContextVar(
    "mage_dbt_invocation_counters", default=())

OK_STATUSES = frozenset({"success", "pass", "warn", "no-op"})
FAILED_STATUSES = frozenset({"error", "fail", "runtime error"})


@dataclass(frozen=True)
class NodeResult:
    """dbt's verdict on one node of an invocation."""

    unique_id: str
    status: str
    message: str | None = None
    execution_time: float = 0.0
    rows_affected: int | None = None
    failures: int | None = None
    finished_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    # Microbatch models: dbt's batch windows ([start, end) ISO timestamps), successful and failed.
    batches_ok: tuple[tuple[str, str], ...] = ()
    batches_failed: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES

    @property
    def skipped(self) -> bool:
        return self.status == "skipped"


class NodeListener(Protocol):
    """Receives node lifecycle events while dbt runs (called from dbt's worker threads)."""

    def node_started(self, unique_id: str) -> None: ...

    def node_finished(self, result: NodeResult) -> None: ...


@dataclass
class InvocationOutcome:
    """What one dbt invocation produced."""

    success: bool
    results: dict[str, NodeResult]
    error: str | None
    raw: Any = None


def dbt_lock() -> threading.RLock:
    """The process-wide lock around anything that touches dbt's global state."""
    return _DBT_LOCK


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    """Temporarily run in `path` (process-wide: hold `dbt_lock()` while inside)."""
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@dataclass
class InvocationCounter:
    count: int = 0


@contextlib.contextmanager
def count_invocations() -> Iterator[InvocationCounter]:
    """Count the dbt invocations made inside this block (in this thread/context), whoever makes them."""
    counter = InvocationCounter()
    token = _COUNTERS.set((*_COUNTERS.get(), counter))
    try:
        yield counter
    finally:
        _COUNTERS.reset(token)


def count_invocation() -> None:
    """One more dbt invocation for the open `count_invocations` counters of this context (an
    executor whose dbt runs in another process logs there and counts here)."""
    for counter in _COUNTERS.get():
        counter.count += 1


def reset_compiled_state(manifest: Any) -> None:
    """Forget what the previous invocation compiled into the shared, parsed manifest.

    dbt's compiler records on each node that its ephemeral CTEs are injected (plus the SQL before
    injection) and never resets that; an invocation given the same manifest object again would
    then skip the injection and run `select ... from __dbt__cte__x` without the CTE, or inline the
    previous invocation's SQL of an ephemeral model (compiled with other vars).
    """
    for node in getattr(manifest, "nodes", {}).values():
        if getattr(node, "compiled", False) or getattr(node, "extra_ctes_injected", False):
            node.compiled = False
            node.extra_ctes_injected = False
            node.extra_ctes = []
            node._pre_injected_sql = None


def invoke_dbt(
    args: list[str],
    *,
    manifest: Any = None,
    callbacks: Iterable[Callable[[Any], None]] = (),
    invocation_log: Path | None = None,
    node_count: int | None = None,
    note: dict[str, Any] | None = None,
):
    """Run one dbt command in this process, never concurrently with another.

    `note`: extra fields for the invocation log record (e.g. whether a parse was traced).
    """
    from dbt.cli.main import dbtRunner

    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    with _DBT_LOCK:
        started = time.perf_counter()
        if manifest is not None:
            reset_compiled_state(manifest)
        result = dbtRunner(manifest=manifest, callbacks=list(callbacks)).invoke(args)
        seconds = time.perf_counter() - started
    log_invocation(args, invocation_log=invocation_log, node_count=node_count, seconds=seconds,
                   success=bool(result.success), cached_manifest=manifest is not None, note=note)
    return result


def log_invocation(args: list[str], *, invocation_log: Path | None, node_count: int | None, seconds: float,
                   success: bool, cached_manifest: bool, note: dict[str, Any] | None = None) -> None:
    """Count one dbt invocation (`count_invocations`) and append its record to the invocation log;
    every executor calls this once per dbt invocation, in-process or not."""
    count_invocation()
    if invocation_log is None:
        return
    invocation_log.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "at": datetime.now(timezone.utc).isoformat(),
        "pid": os.getpid(),
        "command": " ".join(args[:2]) if args[:1] in (["source"], ["docs"]) else (args[0] if args else ""),
        "nodes": node_count,
        "seconds": round(seconds, 3),
        "success": success,
        "cached_manifest": cached_manifest,
        **(note or {}),
    }
    rotate_log(invocation_log)  # bounded: mage_dbt.dbt.pruning
    with invocation_log.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


class NodeEvents:
    """A dbt callback forwarding NodeStart/NodeFinished to a `NodeListener`.

    dbt fires NodeStart/NodeFinished for every batch of a microbatch model too: for the
    `microbatch` ids, a batch's events become `batch_started`/`batch_finished` calls (when the
    listener has them) and the model's own result is left to the invocation's run results
    (`results_from_run`, which carry the batch windows): `finished` never holds it.
    """

    _EVENTS = ("NodeStart", "NodeFinished", "LogStartBatch", "LogBatchResult", "GenericExceptionOnRun")

    def __init__(self, listener: NodeListener, wanted: set[str] | None = None,
                 microbatch: set[str] | None = None) -> None:
        self._listener = listener
        self._wanted = wanted
        self._microbatch = microbatch or set()
        self._started: set[str] = set()
        self._started_lock = threading.Lock()  # dbt's threads (a microbatch model's batches) race to start a node
        self.finished: dict[str, NodeResult] = {}
        self.batch_errors: dict[str, str] = {}  # microbatch model -> the first error of a batch
        self.failure: Exception | None = None  # the first error of our own handling of an event

    def __call__(self, event: Any) -> None:
        # An exception escaping a callback lands in dbt's worker threads, which can leave the
        # invocation waiting forever: keep the first one for the executor to raise afterwards.
        try:
            self._handle(event)
        except Exception as exc:  # noqa: BLE001 - re-raised by the executor once dbt returns
            if self.failure is None:
                LOG.exception("handling dbt's %s event failed", getattr(event.info, "name", "?"))
                self.failure = exc

    def _handle(self, event: Any) -> None:
        name = event.info.name
        if name not in self._EVENTS:
            return
        node_info = getattr(event.data, "node_info", None)
        unique_id = getattr(node_info, "unique_id", None)
        if not unique_id or (self._wanted is not None and unique_id not in self._wanted):
            return
        if name == "NodeStart":
            with self._started_lock:  # a microbatch model's batches start it again
                first = unique_id not in self._started
                self._started.add(unique_id)
            if first:
                self._listener.node_started(unique_id)
            return
        if unique_id in self._microbatch:
            if name == "GenericExceptionOnRun":  # why a batch failed (its result says only "ERROR")
                text = first_lines(str(getattr(event.data, "exc", "") or "").replace("Exception on worker thread.", ""))
                if text:
                    self.batch_errors.setdefault(unique_id, text)
            self._batch_event(name, unique_id, event.data)
            return
        if name == "NodeFinished":
            result = result_from_event(unique_id, event.data)
            self.finished[unique_id] = result
            self._listener.node_finished(result)

    def _batch_event(self, name: str, unique_id: str, data: Any) -> None:
        from mage_dbt.dbt.microbatch import batch_label

        label = batch_label(getattr(data, "description", ""))
        if label is None or name not in ("LogStartBatch", "LogBatchResult"):
            return
        if name == "LogStartBatch":
            callback = getattr(self._listener, "batch_started", None)
            if callback:
                callback(unique_id, label)
            return
        callback = getattr(self._listener, "batch_finished", None)
        if callback:
            status = str(getattr(data, "status", "") or "").lower()
            ok = status not in ("error", "skipped", "fail")
            callback(unique_id, label, ok=ok, skipped=status == "skipped",
                     seconds=float(getattr(data, "execution_time", 0.0) or 0.0))


def result_from_event(unique_id: str, data: Any) -> NodeResult:
    run_result = getattr(data, "run_result", None)
    status = (getattr(run_result, "status", None) or data.node_info.node_status or "").lower()
    adapter_response = getattr(run_result, "adapter_response", None) or {}
    if not hasattr(adapter_response, "get") and hasattr(adapter_response, "items"):
        adapter_response = dict(adapter_response.items())  # a protobuf Struct in event data
    rows = adapter_response.get("rows_affected") if hasattr(adapter_response, "get") else None
    return NodeResult(
        unique_id=unique_id,
        status=status,
        message=(getattr(run_result, "message", None) or None),
        execution_time=float(getattr(run_result, "execution_time", 0.0) or 0.0),
        rows_affected=int(rows) if rows not in (None, "") else None,
        failures=getattr(run_result, "num_failures", None),
    )


def results_from_run(raw_result: Any) -> dict[str, NodeResult]:
    """Node results from a dbtRunnerResult's RunExecutionResult (the authoritative statuses)."""
    from mage_dbt.dbt.microbatch import batch_windows

    out: dict[str, NodeResult] = {}
    for item in getattr(getattr(raw_result, "result", None), "results", None) or ():
        adapter_response = item.adapter_response or {}
        rows = adapter_response.get("rows_affected")
        batches_ok, batches_failed = batch_windows(item)
        out[item.node.unique_id] = NodeResult(
            unique_id=item.node.unique_id,
            status=str(getattr(item.status, "value", item.status)).lower(),
            message=item.message,
            execution_time=float(item.execution_time or 0.0),
            rows_affected=int(rows) if rows not in (None, "") else None,
            failures=item.failures,
            batches_ok=batches_ok,
            batches_failed=batches_failed,
        )
    return out


def error_text(raw_result: Any) -> str | None:
    """The first line of an invocation's exception, if it raised one."""
    exc = getattr(raw_result, "exception", None)
    if exc is None:
        return None
    return first_lines(str(exc)) or type(exc).__name__


def first_lines(text: str, count: int = 3) -> str:
    """The first `count` non-empty lines of a dbt error, on one line."""
    return " ".join([line.strip() for line in text.splitlines() if line.strip()][:count])
