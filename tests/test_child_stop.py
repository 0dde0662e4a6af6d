"""Ctrl-C while an executor relays a dbt child process's node events (mage_dbt.dbt.child_stop).

The worker and json_log executors hand dbt's node events to the listener in the main thread, where
Ctrl-C's handler runs. The SIGINT here arrives in the middle of a listener call, as it once did in
CI (a seed's result recorded, its task run left Running for good): the call must finish, the child
must stop (dbt cancels what it did not finish) and every node the child reported must reach the
listener. Real dbt on PostgreSQL, the executors used in-process, the SIGINT sent to this process.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from tests.support import dbt_changes


class InterruptingListener:
    """Sends this process SIGINT from inside its first node_finished call, then keeps working."""

    def __init__(self) -> None:
        self.entered: list[str] = []
        self.completed: list[str] = []
        self.started: list[str] = []

    def node_started(self, unique_id: str) -> None:
        self.started.append(unique_id)

    def node_finished(self, result) -> None:
        self.entered.append(result.unique_id)
        if len(self.entered) == 1:
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
    assert 0 < len(ran) < len(ids), (len(ran), len(ids))  # dbt stopped after the SIGINT, before the end
    assert set(outcome.results) <= set(listener.entered), set(outcome.results) - set(listener.entered)
