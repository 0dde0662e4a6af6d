"""Concurrent backfills: N worker processes take intervals from one date-ordered queue.

dbt keeps process-global state, so concurrency across dates means separate processes, never
threads. Each worker is `python -m mage_dbt.backfill.worker`: it loads the manifest from the
on-disk cache the parent filled (no parse), then runs the intervals it is sent, one at a time, each
as a flow run of the pipeline flow. The protocol is one JSON object per line: jobs on the worker's
stdin, events (`ready`, `started`, `finished`) on its stdout. The worker's own output goes to
`<data_dir>/backfills/<id>.worker-<n>.log`.

The parent hands the next interval (in date order) to whichever worker is free, and creates for it
a tracking task run in the backfill flow run, so the worker's flow run shows up there as a subflow.
Workers inherit the backfill lock's file descriptor, so the backfill counts as running until the
last worker exits. A worker that dies mid-interval leaves its flow run CRASHED, and the pool goes
on with the others.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import IO, Callable
from uuid import UUID

from mage_dbt.backfill.microbatch_phase import interval_select
from mage_dbt.backfill.plan import BackfillPlan, interval_label, record_path
from mage_dbt.dates import Interval
from mage_dbt.errors import BackfillError
from mage_dbt.settings import ProjectSettings

WORKER_MODULE = "mage_dbt.backfill.worker"


@dataclass(frozen=True)
class _SubflowTask:
    """What `create_task_run` reads from a Task, for the task run standing for a subflow."""

    name: str
    task_key: str
    tags: tuple[str, ...] = ()
    version: str | None = None
    retries: int = 0
    retry_delay_seconds: int = 0
    retry_jitter_factor: float | None = None


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen
    buffer: bytes = b""
    ready: bool = False
    gone: bool = False
    job: dict | None = None
    started_at: float = 0.0
    flow_run_id: str | None = None
    log_path: str = ""


class WorkerPool:
    """Runs intervals of one backfill in `size` worker processes."""

    def __init__(
        self,
        settings: ProjectSettings,
        plan: BackfillPlan,
        *,
        size: int,
        parent_flow_run_id: str | None = None,
        lock_fd: int | None = None,
    ) -> None:
        self.settings = settings
        self.plan = plan
        self.size = size
        self.parent_flow_run_id = parent_flow_run_id
        self.lock_fd = lock_fd

    def run(
        self,
        intervals: list[Interval],
        *,
        on_started: Callable[[str], None],
        on_finished: Callable[[str, str, float, str | None], None],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        queue = list(intervals)
        workers = [self._spawn(i) for i in range(min(self.size, len(queue)))]
        selector = selectors.DefaultSelector()
        for worker in workers:
            selector.register(worker.process.stdout, selectors.EVENT_READ, worker)
        dispatching = False
        try:
            while selector.get_map():
                for key, _ in selector.select():
                    worker: _Worker = key.data
                    chunk = os.read(key.fileobj.fileno(), 65536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        worker.gone = True
                        self._gone(worker, on_finished)
                        continue
                    for event in self._events(worker, chunk):
                        if event["event"] == "started":
                            worker.flow_run_id = event.get("flow_run_id")
                        elif event["event"] == "finished":
                            job, worker.job, worker.flow_run_id = worker.job, None, None
                            on_finished(job["label"], event["status"], time.perf_counter() - worker.started_at,
                                        event.get("message"))
                        if event["event"] in ("ready", "finished"):
                            worker.ready = True
                # Start handing out work once every worker is up, so each one gets its share.
                dispatching = dispatching or all(w.ready or w.gone for w in workers)
                for worker in workers if dispatching else ():
                    if worker.ready and worker.job is None and not worker.gone:
                        if queue and not should_stop():
                            self._dispatch(worker, queue.pop(0), on_started)
                        else:
                            _close(worker.process.stdin)
        except BaseException as exc:
            from mage_dbt.runs.interrupts import interrupted

            stop = (signal.SIGINT if isinstance(exc, KeyboardInterrupt) and interrupted()  # they cancel their runs
                    else signal.SIGTERM)
            for worker in workers:
                if worker.process.poll() is None:
                    worker.process.send_signal(stop)
            raise
        finally:
            for worker in workers:
                _close(worker.process.stdin)
                worker.process.wait()
            selector.close()
        if queue and not should_stop():
            logs = ", ".join(w.log_path for w in workers)
            raise BackfillError(
                f"every worker process exited before the backfill ended; {len(queue)} intervals did not run",
                hint=f"see the worker logs ({logs}), then resume",
            )

    # -- internals --------------------------------------------------------------------------------
    def _spawn(self, index: int) -> _Worker:
        log_path = record_path(self.settings, self.plan.id).with_suffix(f".worker-{index + 1}.log")
        config = {
            "project_dir": str(self.settings.root),
            "backfill_id": self.plan.id,
            "pipeline": self.plan.pipeline,
            "select": interval_select(self.plan),
            "target": self.plan.target,
            "tag": self.plan.tag,
            # the manifest the intervals need: parsed with the first one's dates (mage_dbt.dbt.parse_vars)
            "first_execution_date": self.plan.intervals[0].start.isoformat() if self.plan.intervals else None,
        }
        env = {**os.environ, "PREFECT_API_URL": _api_url(), "PYTHONUNBUFFERED": "1"}
        # the worker loads its manifest with dbt's defaults, then adopts this process's setting
        config["dbt_write_json"] = env.pop("DBT_WRITE_JSON", None)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, json.dumps(config)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=self.settings.root, env=env,
                pass_fds=(self.lock_fd,) if self.lock_fd is not None else (),
            )
        return _Worker(index=index, process=process, log_path=str(log_path))

    def _dispatch(self, worker: _Worker, interval: Interval, on_started: Callable[[str], None]) -> None:
        label = interval_label(interval, self.plan.interval)
        job = {
            "label": label,
            "execution_date": interval.start.isoformat(),
            "full_refresh": False,
            "parent_task_run_id": self._tracking_task_run(label),
        }
        worker.job, worker.ready, worker.started_at = job, False, time.perf_counter()
        on_started(label)
        assert worker.process.stdin is not None
        try:
            worker.process.stdin.write((json.dumps(job) + "\n").encode())
            worker.process.stdin.flush()
        except BrokenPipeError:
            pass  # the worker died: its EOF reports this interval as crashed

    def _tracking_task_run(self, label: str) -> str | None:
        """A task run in the backfill flow run standing for the interval's subflow (as Prefect does)."""
        if not self.parent_flow_run_id:
            return None
        from prefect.client.orchestration import get_client
        from prefect.states import Pending

        from mage_dbt.runs.history import FLOW_NAME

        identity = _SubflowTask(name=FLOW_NAME, task_key=f"mage-dbt.subflow.{FLOW_NAME}")
        with get_client(sync_client=True) as client:
            run = client.create_task_run(
                identity, UUID(self.parent_flow_run_id), dynamic_key=label,
                name=f"{self.plan.pipeline}-{label}", state=Pending(),
            )
        return str(run.id)

    @staticmethod
    def _events(worker: _Worker, chunk: bytes) -> list[dict]:
        worker.buffer += chunk
        *lines, worker.buffer = worker.buffer.split(b"\n")
        return [json.loads(line) for line in lines if line.strip()]

    def _gone(self, worker: _Worker, on_finished: Callable[[str, str, float, str | None], None]) -> None:
        """A worker closed its output: fine when idle, a crash of its interval otherwise."""
        code = worker.process.wait()
        if worker.job is None:
            return
        message = f"worker process {worker.process.pid} exited with code {code} mid-interval; see {worker.log_path}"
        if worker.flow_run_id:
            _mark_crashed(worker.flow_run_id, message)
        on_finished(worker.job["label"], "crashed", time.perf_counter() - worker.started_at, message)
        worker.job = None


def _api_url() -> str:
    """The Prefect API this process talks to (an ephemeral server's URL too), for the workers."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")


def _mark_crashed(flow_run_id: str, message: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Crashed(message=message), force=True)


def _close(stream: IO[bytes] | None) -> None:
    if stream is not None and not stream.closed:
        try:
            stream.close()
        except BrokenPipeError:
            pass
