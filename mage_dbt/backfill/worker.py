"""A backfill worker process: `python -m mage_dbt.backfill.worker '<config json>'`.

Started by `WorkerPool`. It resolves the pipeline once (the manifest comes from the on-disk cache,
so nothing is parsed), says `ready`, then runs every job it reads from stdin — one interval as a
flow run of the pipeline flow, created as a subflow of the backfill's tracking task run and tagged
with the backfill id — and answers `started` / `finished` on stdout, one JSON object per line.
Everything else this process prints goes to stderr (the worker's log file), so stray output from
dbt or Prefect can never corrupt the protocol. It exits when stdin closes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any
from uuid import UUID


def run_job(config: dict[str, Any], job: dict[str, Any], emit) -> dict[str, Any]:
    """Run one interval as a flow run; returns the `finished` event."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Pending

    from mage_dbt.dates import parse_execution_date
    from mage_dbt.flows import pipeline_flow
    from mage_dbt.runs.heartbeats import engine_heartbeats_off

    parameters = {
        "pipeline": config["pipeline"],
        "execution_date": parse_execution_date(job["execution_date"]),
        "full_refresh": bool(job.get("full_refresh")),
        "select": config.get("select"),
        "target": config.get("target"),
    }
    parent = job.get("parent_task_run_id")
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(
            pipeline_flow, parameters=pipeline_flow.serialize_parameters(parameters),
            parent_task_run_id=UUID(parent) if parent else None, tags=[config["tag"]], state=Pending(),
        )
    emit({"event": "started", "label": job["label"], "flow_run_id": str(flow_run.id)})
    try:
        with engine_heartbeats_off():
            state = run_flow(pipeline_flow, flow_run=flow_run, parameters=parameters, return_type="state")
    except Exception as exc:  # the engine records the failure on the flow run; report it and go on
        return {"event": "finished", "label": job["label"], "status": "failed", "message": str(exc)[:500]}
    status = ("completed" if state.is_completed() else "crashed" if state.is_crashed()
              else "cancelled" if state.is_cancelled() else "failed")
    return {"event": "finished", "label": job["label"], "status": status, "message": state.message,
            "flow_run_id": str(flow_run.id)}


def main(argv: list[str]) -> int:
    config = json.loads(argv[1])
    protocol: IO[str] = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # from here on, print() and library output land in the log

    def emit(event: dict[str, Any]) -> None:
        protocol.write(json.dumps(event) + "\n")
        protocol.flush()

    from mage_dbt.pipelines.pipeline import load_pipeline
    from mage_dbt.runs.prefect_setup import quiet_prefect_console
    from mage_dbt.settings import load_settings

    quiet_prefect_console()
    settings = load_settings(Path(config["project_dir"]))
    settings.export_environment()
    from mage_dbt.context import run_dbt_vars
    from mage_dbt.pipelines.spec import load_pipeline_spec

    first = config.get("first_execution_date")
    spec = load_pipeline_spec(settings.flows_dir, config["pipeline"])
    resolved = load_pipeline(settings, config["pipeline"], target=config.get("target"), select=config.get("select"),
                             dbt_vars=run_dbt_vars(spec, first) if first else None)
    if config.get("dbt_write_json") is not None:  # as in the parent, once the manifest is loaded
        from mage_dbt.backfill.flow import apply_no_dbt_artifacts

        apply_no_dbt_artifacts(resolved.dbt_ref.target_path if resolved.dbt_ref else None)
    from mage_dbt.runs.interrupts import EXIT_CODE, interruptible, interrupted

    emit({"event": "ready", "pid": os.getpid()})
    with interruptible(second_exits=False):  # Ctrl-C: the interval run ends Cancelled, then the worker stops
        try:
            for line in sys.stdin:
                if line.strip():
                    emit(run_job(config, json.loads(line), emit))
                if interrupted():
                    return EXIT_CODE
        except KeyboardInterrupt:
            return EXIT_CODE
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # DuckDB's bindings print leak warnings at interpreter teardown
