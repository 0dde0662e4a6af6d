"""How block states and heartbeats reach a real Prefect server.

A block's Running state is held back for `running_delay`: a block still running by then shows as
RUNNING in the API, one that ended sooner is recorded from its final event alone (with its start
and end time). Flows run in-process send their heartbeats from our own thread, which is gone as
soon as the run ends.
"""

from __future__ import annotations

import threading

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

from mage_dbt.runs.heartbeats import engine_heartbeats_off, flow_run_heartbeats
from mage_dbt.runs.task_runs import TaskRunReporter
from tests.support.deployments import wait_until


def _task_run(task_run_id):
    with get_client(sync_client=True) as client:
        return client.read_task_run(task_run_id)


def _state_types(task_run_id) -> list[str]:
    with get_client(sync_client=True) as client:
        return [s.type.value for s in client.read_task_run_states(task_run_id)]


def _running_in_api(task_run_id):
    try:
        return _task_run(task_run_id).state_type.value == "RUNNING"
    except Exception:  # not recorded yet
        return False


@flow(persist_result=False)
def _report_blocks() -> dict:
    # The delay bounds how long the two calls for "fast" may take on a loaded machine: with 0.2 s a CI run
    # (CPU-bound, two workers) once let it pass between them and a Running was sent for the fast block.
    reporter = TaskRunReporter(FlowRunContext.get().flow_run.id, running_delay=5.0)
    ids = {"fast": reporter.started("fast", kind="python")}
    reporter.finished("fast", ok=True, message="done")
    ids["slow"] = reporter.started("slow", kind="python", upstream=("fast",))
    # The slow block is still running: its Running state must reach the API before it ends.
    wait_until(lambda: _running_in_api(ids["slow"]), 60, "the slow block to show as RUNNING")
    reporter.finished("slow", ok=False, message="boom")
    reporter.skipped("after", kind="python", reason="upstream block 'slow' did not succeed")
    ids["after"] = reporter._id("after")
    reporter.close()
    return {"ids": ids, "errors": reporter.errors}


def test_short_blocks_send_only_their_final_state_long_ones_show_running():
    result = _report_blocks()
    assert result["errors"] == []
    ids = result["ids"]

    fast = _task_run(ids["fast"])
    assert (fast.state_type.value, fast.state.message) == ("COMPLETED", "done")
    assert _state_types(ids["fast"]) == ["COMPLETED"]  # no Running event was sent for it
    assert fast.start_time is not None and fast.end_time is not None and fast.start_time <= fast.end_time
    assert fast.run_count == 1

    slow = _task_run(ids["slow"])
    assert (slow.state_type.value, slow.state.message) == ("FAILED", "boom")
    assert _state_types(ids["slow"]) == ["RUNNING", "FAILED"]
    assert slow.start_time < slow.end_time and slow.total_run_time.total_seconds() > 0
    assert [i.id for i in slow.task_inputs["upstream"]] == [ids["fast"]]

    after = _task_run(ids["after"])
    assert (after.state_type.value, after.state_name) == ("CANCELLED", "Skipped")


@flow(persist_result=False)
def _beating() -> str:
    with flow_run_heartbeats():
        assert any(t.name == "mage-dbt-heartbeat" for t in threading.enumerate())
        return str(FlowRunContext.get().flow_run.id)


def _heartbeats_of(flow_run_id: str) -> int:
    with get_client(sync_client=True) as client:
        body = {"filter": {"event": {"name": ["prefect.flow-run.heartbeat"]},
                           "any_resource": {"id": [f"prefect.flow-run.{flow_run_id}"]}}}
        return client.request("POST", "/events/filter", json=body).json()["total"]


def test_in_process_flow_runs_send_heartbeats_from_a_thread_that_stops_with_the_run():
    frequency = PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value()
    assert frequency  # Prefect's default (180 s) is on
    with engine_heartbeats_off():
        assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() is None  # Prefect's own thread is off
        run_id = _beating()
    assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value() == frequency  # restored
    # The thread waits `frequency` seconds between beats; it is gone the moment the flow body ended.
    assert not any(t.name == "mage-dbt-heartbeat" for t in threading.enumerate())
    assert wait_until(lambda: _heartbeats_of(run_id), 60, "the flow run's heartbeat event") == 1


def test_without_the_hand_over_the_flow_body_starts_no_heartbeat_thread():
    @flow(persist_result=False)
    def plain() -> bool:
        with flow_run_heartbeats():
            return any(t.name == "mage-dbt-heartbeat" for t in threading.enumerate())

    assert plain() is False  # Prefect's engine sends this run's heartbeats itself
