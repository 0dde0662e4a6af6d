"""Ctrl-C at the worst moments: no task run is left Running after an interrupted run.

While an executor relays a dbt child process's node events (mage_dbt.dbt.child_stop): the worker and
json_log executors hand dbt's node events to the listener in the main thread, where
Ctrl-C's handler runs. The SIGINT here arrives in the middle of a listener call, as it once did in
CI (a seed's result recorded, its task run left Running for good): the call must finish, the child
must stop (dbt cancels what it did not finish) and every node the child reported must reach the
listener. Real dbt on PostgreSQL, the executors used in-process, the SIGINT sent to this process.

Between a block's result and its task run's final state (the runner's safety net): Ctrl-C that lands
there leaves the block's result in the summary; the runner ends its task run as that result says.
The interrupt is raised from the real reporter at that point; the task runs are read from Prefect.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from tests.support import dbt_changes
from tests.support.block_pipelines import write_pipeline
from tests.support.runs import task_runs


class InterruptingListener:
    """Sends this process SIGINT from inside the first node_finished call of a node that succeeded, then keeps
    working. (Not simply the first call: the demo's landing table is written by a Python block this test does not
    run, so its source tests error, and one of them finished first in a CI run: nothing had succeeded yet.)"""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.completed: list[str] = []
        self.first = None  # the result the SIGINT was sent from

    def node_started(self, unique_id: str) -> None:
        pass

    def node_finished(self, result) -> None:
        self.entered.append(result.unique_id)
        if self.first is None and result.ok:
            self.first = result
            os.kill(os.getpid(), signal.SIGINT)
        total = 0
        for step in range(200_000):  # bytecodes enough for the handler to run inside this call
            total += step
        self.completed.append(result.unique_id)


@pytest.mark.parametrize("executor_name", ["worker", "json_log"])
def test_ctrl_c_inside_a_listener_call_stops_dbt_without_cutting_the_call(executor_name, demo_project, pg_env,
                                                                         monkeypatch):
    from mage_dbt.context import make_context
    from mage_dbt.dbt import worker_executor
    from mage_dbt.dbt.json_log_executor import SubprocessJsonDbtExecutor
    from mage_dbt.dbt.manifest import DbtProjectRef, load_manifest
    from mage_dbt.runs import interrupts

    assert threading.current_thread() is threading.main_thread()  # signals reach the main thread only
    dbt_changes.reset_pg_schemas(pg_env)
    for name, value in pg_env.items():
        monkeypatch.setenv(name, value)
    worker_executor._close_shared()  # a worker started earlier in this process has another environment
    ref = DbtProjectRef(name="demo", project_dir=demo_project / "dbt_projects" / "demo", profiles_dir=demo_project,
                        data_dir=demo_project / ".mage_dbt", target="pg")
    loaded = load_manifest(ref)
    ids = sorted(u for u, node in loaded.nodes.items() if node.resource_type in ("seed", "model", "test"))
    executor = worker_executor.WorkerDbtExecutor() if executor_name == "worker" else SubprocessJsonDbtExecutor()
    listener = InterruptingListener()
    try:
        with interrupts.interruptible():
            outcome = executor.run_nodes(loaded, ids, context=make_context("demo", "2024-02-01", target="pg"),
                                         listener=listener)
        assert interrupts.interrupted()
    finally:
        interrupts.reset()
        worker_executor._close_shared()
    assert listener.entered and listener.completed == listener.entered  # no call was cut in half
    assert not outcome.success
    ran = [u for u, r in outcome.results.items() if r.ok]
    assert 0 < len(ran) < len(ids), (len(ran), len(ids), listener.first, outcome.error,  # dbt stopped after SIGINT
                                     sorted({(r.status, (r.message or "")[:200]) for r in outcome.results.values()}))
    assert set(outcome.results) <= set(listener.entered), set(outcome.results) - set(listener.entered)


OK_BLOCK = "from mage_dbt import data_loader\n\n@data_loader\ndef load(*upstream):\n    return 1\n"


def _interrupted_run(project: str) -> str:
    """Run pipeline 'two' in a flow whose reporter takes a Ctrl-C right after block 'first' ends."""
    from pathlib import Path

    from prefect import flow
    from prefect.context import FlowRunContext

    from mage_dbt.context import make_context
    from mage_dbt.pipelines.pipeline import load_pipeline
    from mage_dbt.runs import interrupts
    from mage_dbt.runs.runner import PipelineRunner
    from mage_dbt.runs.task_runs import TaskRunReporter
    from mage_dbt.settings import load_settings

    class CtrlCBeforeFinished(TaskRunReporter):
        armed = True

        def finished(self, block, **kwargs):
            if block == "first" and self.armed:  # 'first' is in the summary, its task run still Running
                self.armed = False
                interrupts._INTERRUPTED.set()
                raise KeyboardInterrupt
            super().finished(block, **kwargs)

    @flow(persist_result=False)
    def interrupted_pipeline() -> str:
        settings = load_settings(Path(project))
        pipeline = load_pipeline(settings, "two")
        reporter = CtrlCBeforeFinished(FlowRunContext.get().flow_run.id)
        try:
            summary = PipelineRunner(settings, pipeline, make_context("two", "2024-02-01"), reporter=reporter).run()
        finally:
            interrupts.reset()
        reporter.close()
        assert {n: r.status for n, r in summary.results.items()} == {"first": "success", "second": "cancelled"}
        return str(reporter.flow_run_id)

    return interrupted_pipeline()


def test_ctrl_c_between_a_result_and_its_task_run_state_ends_the_task_run_as_the_result_says(demo_project):
    write_pipeline(demo_project, "two", {"blocks": [
        {"name": "first", "type": "python", "file": "flows/two/ok.py"},
        {"name": "second", "type": "python", "file": "flows/two/ok.py", "upstream": ["first"]},
    ]}, {"flows/two/ok.py": OK_BLOCK})
    runs = task_runs(_interrupted_run(str(demo_project)))
    got = {name: (run.state.type.value, run.state.name) for name, run in runs.items()}
    assert got == {"first": ("COMPLETED", "Completed"), "second": ("CANCELLED", "Cancelled")}, got
