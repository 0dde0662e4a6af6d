"""Per-block Prefect task runs, reported off the hot path.

dbt calls our listener from its worker threads; talking to the Prefect API there would slow dbt
down. `TaskRunReporter` queues each event and a few background threads (sharded by block, so one
block's events stay in order) create the task runs and move them through Running → final state.
Task run ids are generated client-side, so "finish" never waits for "create" to return.
States: Completed, Failed (with dbt's message) and Cancelled named "Skipped" for blocks that did
not run because an upstream failed.
"""

from __future__ import annotations

import logging
import queue
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

from prefect.client.schemas.objects import StateType
from prefect.states import State

LOG = logging.getLogger("mage_dbt.task_runs")
SKIPPED = "Skipped"


@dataclass(frozen=True)
class _TaskIdentity:
    """The attributes `create_task_run` reads from a Task, without building Task objects."""

    name: str
    task_key: str
    tags: tuple[str, ...] = ()
    version: str | None = None
    retries: int = 0
    retry_delay_seconds: int = 0
    retry_jitter_factor: float | None = None


@dataclass
class _Run:
    id: UUID
    name: str
    created: threading.Event = field(default_factory=threading.Event)


class TaskRunReporter:
    """Creates one Prefect task run per block inside `flow_run_id` and reports its states."""

    def __init__(self, flow_run_id: UUID | str, *, workers: int = 4) -> None:
        self.flow_run_id = UUID(str(flow_run_id))
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._queues = [queue.Queue() for _ in range(workers)]
        self._threads = [
            threading.Thread(target=self._work, args=(q,), daemon=True, name=f"mage-dbt-reporter-{i}")
            for i, q in enumerate(self._queues)
        ]
        self.errors: list[str] = []
        for thread in self._threads:
            thread.start()

    # -- public API (thread-safe, non-blocking) --------------------------------------------------
    def started(self, block: str, *, kind: str, upstream: tuple[str, ...] = (), tags: tuple[str, ...] = ()) -> UUID:
        run = self._run(block)
        inputs = {"upstream": [{"input_type": "task_run", "id": str(self._run(u).id)} for u in upstream]}
        self._put(block, ("create", block, run.id, kind, tags, inputs, State(type=StateType.RUNNING)))
        return run.id

    def finished(
        self, block: str, *, ok: bool, message: str | None = None, name: str | None = None, skipped: bool = False
    ) -> None:
        state_type = StateType.CANCELLED if skipped else StateType.COMPLETED if ok else StateType.FAILED
        self._put(block, ("state", block, self._run(block).id, State(type=state_type, name=name, message=message)))

    def skipped(self, block: str, *, kind: str, reason: str, tags: tuple[str, ...] = ()) -> None:
        run = self._run(block)
        state = State(type=StateType.CANCELLED, name=SKIPPED, message=reason)
        self._put(block, ("create", block, run.id, kind, tags, {}, state))

    def log(self, block: str, message: str, level: int = logging.INFO) -> None:
        self._put(block, ("log", block, self._run(block).id, level, message))

    def close(self) -> None:
        """Flush every queued event and stop the workers."""
        for q in self._queues:
            q.put(None)
        for thread in self._threads:
            thread.join()

    # -- internals --------------------------------------------------------------------------------
    def _run(self, block: str) -> _Run:
        with self._lock:
            if block not in self._runs:
                self._runs[block] = _Run(id=uuid4(), name=block)
            return self._runs[block]

    def _put(self, block: str, item: tuple) -> None:
        self._queues[zlib.crc32(block.encode()) % len(self._queues)].put(item)

    def _work(self, q: queue.Queue) -> None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            while (item := q.get()) is not None:
                try:
                    self._handle(client, item)
                except Exception as exc:  # reporting must never break the run itself
                    self.errors.append(f"{item[0]} {item[1]}: {exc}")
                    LOG.warning("could not report %s for block %s to Prefect: %s", item[0], item[1], exc)

    def _handle(self, client: Any, item: tuple) -> None:
        action, block = item[0], item[1]
        if action == "create":
            _, _, run_id, kind, tags, inputs, state = item
            identity = _TaskIdentity(name=block, task_key=f"mage-dbt.{kind}.{block}", tags=("mage-dbt", kind, *tags))
            client.create_task_run(
                identity, self.flow_run_id, dynamic_key=block, id=run_id, name=block, state=state,
                task_inputs=_inputs(inputs),
            )
        elif action == "state":
            _, _, run_id, state = item
            client.set_task_run_state(run_id, state, force=True)
        elif action == "log":
            _, _, run_id, level, message = item
            _send_log(client, self.flow_run_id, run_id, level, message)


def _inputs(raw: dict) -> dict:
    from prefect.client.schemas.objects import TaskRunResult

    return {k: [TaskRunResult(id=UUID(i["id"])) for i in v] for k, v in raw.items() if v}


def _send_log(client: Any, flow_run_id: UUID, task_run_id: UUID, level: int, message: str) -> None:
    from datetime import datetime, timezone

    from prefect.client.schemas.actions import LogCreate

    client.create_logs([
        LogCreate(
            name="mage_dbt", level=level, message=message, timestamp=datetime.now(timezone.utc),
            flow_run_id=flow_run_id, task_run_id=task_run_id,
        )
    ])
