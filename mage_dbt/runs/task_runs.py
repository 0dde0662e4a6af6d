"""Per-block Prefect task runs, reported the way Prefect's own task engine reports them.

Prefect 3 orchestrates task runs client-side: the engine builds the TaskRun locally and emits
`prefect.task-run.<State>` events, which the server's task-run recorder persists. We do the same
for every block, so reporting costs dbt nothing (events are queued and sent in batches over one
websocket by Prefect's EventsWorker) and every state carries the moment it really happened
(dbt's NodeStart / NodeFinished), not the moment an API call got through. Block logs go through
Prefect's batched APILogWorker. States: Running → Completed / Failed (dbt's message), and
Cancelled named "Skipped" for blocks that did not run because an upstream failed, and Completed named
"Reused" for dbt nodes not run because nothing they depend on changed (mage_dbt.runs.reuse). A block retried by
its run policy goes Running → AwaitingRetry (Scheduled, with the time of the next try) → Retrying
(Running; run_count counts the tries) → ..., as Prefect's own task retries do; a block stopped by its
timeout ends Failed named "TimedOut".

A block's Running event is held back for `running_delay` seconds (1 s): a block still running
then shows as Running in the UI; one that ended sooner is reported by its final event alone,
which carries its start time, end time and run time. Most dbt nodes take well under a second,
and every event costs the Prefect server about 10 ms of CPU (the task-run recorder writes each
one), so this halves the events of a dbt run without hiding anything a person could watch.
"""

from __future__ import annotations

import contextvars
import heapq
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any
from uuid import UUID, uuid4

from prefect.client.schemas.objects import StateDetails, StateType, TaskRun, TaskRunPolicy, TaskRunResult
from prefect.states import State
from prefect.utilities.engine import emit_task_run_state_change_event

LOG = logging.getLogger("mage_dbt.task_runs")
SKIPPED = "Skipped"
REUSED = "Reused"
_DEFAULT_NAMES = {
    StateType.RUNNING: "Running",
    StateType.COMPLETED: "Completed",
    StateType.FAILED: "Failed",
    StateType.CANCELLED: "Cancelled",
}


RUNNING_DELAY = 1.0  # seconds a block runs before its Running state is sent


def batch_task_name(block: str, label: str) -> str:
    """The task run of one batch of a microbatch model: the model's name and the batch's start."""
    return f"{block} batch {label}"


class TaskRunReporter:
    """Creates one Prefect task run per block inside `flow_run_id` and reports its states."""

    def __init__(self, flow_run_id: UUID | str, *, running_delay: float = RUNNING_DELAY) -> None:
        self.flow_run_id = UUID(str(flow_run_id))
        self.running_delay = running_delay
        self._runs: dict[str, TaskRun] = {}
        self._ids: dict[str, UUID] = {}
        self._last_event: dict[str, Any] = {}
        self._lock = threading.Lock()
        # Running states not sent yet: block -> its Running state; the heap orders when they are due.
        self._held: dict[str, State] = {}
        self._due: list[tuple[float, str]] = []
        self._wake = threading.Condition(self._lock)
        self._sender: threading.Thread | None = None
        self._closing = False
        # dbt calls us from its own threads, which do not inherit the flow run's context; events
        # are emitted inside a copy of it so Prefect relates them to this flow run.
        self._context = contextvars.copy_context()
        self.errors: list[str] = []
        # Called with a block's name once its final state is queued (not for skipped blocks): the run's
        # asset events (mage_dbt.runs.assets.AssetEvents) go out then, while the run goes on.
        self.after_final: Any = None

    # -- public API (thread-safe; called from dbt's worker threads) -----------------------------
    def started(self, block: str, *, kind: str, upstream: tuple[str, ...] = (), tags: tuple[str, ...] = (),
                retries: int = 0, retrying: bool = False) -> UUID:
        """Running (named "Retrying" for a try after the first); `retries`: the block's policy, shown in Prefect."""
        return self._transition(block, kind, upstream, tags, StateType.RUNNING, "Retrying" if retrying else None,
                                None, retries=retries)

    def awaiting_retry(self, block: str, *, delay: float, message: str | None = None) -> None:
        """A try failed and the next one starts in `delay` seconds."""
        from datetime import timedelta

        at = datetime.now(timezone.utc) + timedelta(seconds=delay)
        self._transition(block, None, (), (), StateType.SCHEDULED, "AwaitingRetry", message, scheduled_time=at)

    def finished(
        self, block: str, *, ok: bool, message: str | None = None, name: str | None = None, skipped: bool = False
    ) -> None:
        state_type = StateType.CANCELLED if skipped else StateType.COMPLETED if ok else StateType.FAILED
        self._transition(block, None, (), (), state_type, name, message)
        if self.after_final is not None and not skipped:
            try:
                self._context.copy().run(self.after_final, block)
            except Exception as exc:  # reporting must never break the run itself
                self.errors.append(f"after {block} ended: {exc}")

    def batch_started(self, block: str, label: str) -> UUID:
        """A batch of microbatch model `block` started: a task run of its own, nested in the model's."""
        return self._transition(batch_task_name(block, label), "microbatch-batch", (), ("microbatch",),
                                StateType.RUNNING, None, None, parent=block)

    def batch_finished(self, block: str, label: str, *, ok: bool, skipped: bool = False, seconds: float = 0.0) -> None:
        state_type = StateType.CANCELLED if skipped else StateType.COMPLETED if ok else StateType.FAILED
        message = "skipped by dbt: an earlier batch failed" if skipped else None
        self._transition(batch_task_name(block, label), "microbatch-batch", (), ("microbatch",), state_type,
                         SKIPPED if skipped else None, message, parent=block)

    def reused(self, block: str, *, kind: str, message: str, upstream: tuple[str, ...] = ()) -> None:
        """Not run: its state key matched its last successful build. Completed, named "Reused"."""
        self._transition(block, kind, upstream, ("reused",), StateType.COMPLETED, REUSED, message)

    def skipped(self, block: str, *, kind: str, reason: str, tags: tuple[str, ...] = (),
                state_name: str = SKIPPED) -> None:
        self._transition(block, kind, (), tags, StateType.CANCELLED, state_name, reason)

    def unfinished(self) -> list[str]:
        """Task runs reported so far whose state is not final (Running, AwaitingRetry)."""
        with self._lock:
            return [block for block, run in self._runs.items() if run.state is not None and not run.state.is_final()]

    def task_run_ids(self) -> dict[str, UUID]:
        """Block name -> the id of its task run (blocks reported so far)."""
        with self._lock:
            return {block: run.id for block, run in self._runs.items()}

    def log(self, block: str, message: str, level: int = logging.INFO) -> None:
        from prefect.logging.handlers import APILogWorker

        try:
            APILogWorker.instance().send({
                "name": "mage_dbt",
                "level": level,
                "message": message,
                "timestamp": datetime.now(timezone.utc).isoformat(),
                "flow_run_id": str(self.flow_run_id),
                "task_run_id": str(self._id(block)),
            })
        except Exception as exc:  # reporting must never break the run itself
            self.errors.append(f"log {block}: {exc}")

    def close(self) -> None:
        """Send every queued event and log line before the flow run ends."""
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        self._stop_sender()
        for worker in (APILogWorker, EventsWorker):
            try:
                worker.drain_all(timeout=60)
            except Exception as exc:
                self.errors.append(f"drain {worker.__name__}: {exc}")
        self._await_recorded()

    def _await_recorded(self, timeout: float = 60.0) -> None:
        """Wait until the server has recorded every final state we sent.

        The server persists task-run events asynchronously; waiting here means that once the flow
        run is over, its task runs are complete in the API and the UI (one count query per poll).
        """
        import time

        from prefect.client.orchestration import get_client

        with self._lock:
            expected = sum(1 for run in self._runs.values() if run.state is not None and run.state.is_final())
        if not expected:
            return
        body = {
            "flow_runs": {"id": {"any_": [str(self.flow_run_id)]}},
            "task_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CANCELLED", "CRASHED"]}}},
        }
        deadline = time.monotonic() + timeout
        try:
            with get_client(sync_client=True) as client:
                while time.monotonic() < deadline:
                    recorded = client.request("POST", "/task_runs/count", json=body).json()
                    if recorded >= expected:
                        return
                    time.sleep(0.1)  # polling the server's recorder, bounded by the deadline
        except Exception as exc:
            self.errors.append(f"await recorded: {exc}")
            return
        LOG.warning("Prefect recorded only some task runs of flow run %s in %.0fs", self.flow_run_id, timeout)

    # -- internals --------------------------------------------------------------------------------
    def _id(self, block: str) -> UUID:
        with self._lock:
            return self._ids.setdefault(block, uuid4())

    def _transition(self, block, kind, upstream, tags, state_type, name, message, *, retries: int = 0,
                    scheduled_time: datetime | None = None, parent: str | None = None) -> UUID:
        try:
            with self._lock:
                run = self._runs.get(block) or self._new_run(block, kind or "block", upstream, tags, parent)
                if retries:
                    run.empirical_policy = TaskRunPolicy(retries=retries)
                previous = run.state
                state = State(
                    type=state_type,
                    name=name or _DEFAULT_NAMES[state_type],
                    message=message,
                    state_details=StateDetails(task_run_id=run.id, flow_run_id=self.flow_run_id,
                                               scheduled_time=scheduled_time),
                )
                if previous is not None and state.timestamp <= previous.timestamp:
                    from datetime import timedelta

                    state.timestamp = previous.timestamp + timedelta(microseconds=1)
                self._apply(run, previous, state)
                if state_type == StateType.RUNNING and self.running_delay > 0:
                    self._hold(block, state)
                else:
                    self._held.pop(block, None)  # ended before its Running state was due: not sent
                    self._emit(block, run, previous, state)
                return run.id
        except Exception as exc:  # reporting must never break the run itself
            self.errors.append(f"{state_type.value} {block}: {exc}")
            LOG.warning("could not report %s for block %s to Prefect: %s", state_type.value, block, exc)
            return self._ids.get(block) or uuid4()

    def _emit(self, block: str, run: TaskRun, previous: State | None, state: State) -> None:
        """Send one state change as an event (caller holds the lock)."""
        self._last_event[block] = self._context.copy().run(
            emit_task_run_state_change_event,
            task_run=run, initial_state=previous, validated_state=state,
            follows=self._last_event.get(block),
        )

    def _hold(self, block: str, state: State) -> None:
        """Keep a Running state back until it is due (caller holds the lock)."""
        self._held[block] = state
        heapq.heappush(self._due, (time.monotonic() + self.running_delay, block))
        if self._sender is None:
            self._sender = threading.Thread(
                target=self._context.copy().run, args=(self._send_due,), name="mage-dbt-running-states", daemon=True)
            self._sender.start()
        self._wake.notify()

    def _send_due(self) -> None:
        """Background thread: send the Running state of every block still running when it is due."""
        with self._lock:
            while True:
                now = time.monotonic()
                while self._due and (self._due[0][0] <= now or self._closing):
                    _, block = heapq.heappop(self._due)
                    state = self._held.pop(block, None)
                    if state is not None:
                        try:
                            self._emit(block, self._runs[block], None, state)
                        except Exception as exc:  # reporting must never break the run itself
                            self.errors.append(f"RUNNING {block}: {exc}")
                if self._closing:
                    return
                self._wake.wait(timeout=self._due[0][0] - now if self._due else None)

    def _stop_sender(self) -> None:
        """Send what is still held (blocks that never ended) and stop the background thread."""
        with self._lock:
            sender, self._closing = self._sender, True
            self._wake.notify()
        if sender is not None:
            sender.join(timeout=30)

    def _new_run(self, block: str, kind: str, upstream: tuple[str, ...], tags: tuple[str, ...],
                 parent: str | None = None) -> TaskRun:
        run_id = self._ids.setdefault(block, uuid4())
        inputs = {}
        ups = [self._ids.setdefault(u, uuid4()) for u in upstream]
        if ups:
            inputs["upstream"] = [TaskRunResult(id=u) for u in ups]
        if parent is not None:  # the UI draws it inside its parent's task run
            inputs["__parents__"] = [TaskRunResult(id=self._ids.setdefault(parent, uuid4()))]
        now = datetime.now(timezone.utc)
        run = TaskRun(
            id=run_id,
            name=block,
            flow_run_id=self.flow_run_id,
            task_key=f"mage-dbt.{kind}.{block}",
            dynamic_key=block,
            empirical_policy=TaskRunPolicy(),
            tags=["mage-dbt", kind, *tags],
            task_inputs=inputs,
            expected_start_time=now,
            created=now,
            updated=now,
        )
        run.state = None
        self._runs[block] = run
        return run

    @staticmethod
    def _apply(run: TaskRun, previous: State | None, state: State) -> None:
        """Update the denormalised fields the way Prefect's task engine does."""
        run.state = state
        run.state_id, run.state_type, run.state_name = state.id, state.type, state.name
        if state.type == StateType.RUNNING:
            run.run_count += 1
            run.start_time = run.start_time or state.timestamp
        if previous is not None and previous.type == StateType.RUNNING:
            run.total_run_time += state.timestamp - previous.timestamp
        if state.is_final():
            run.end_time = state.timestamp
