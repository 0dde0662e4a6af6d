"""How the CLI talks to Prefect: run a flow in this process and get its summary back, quietly.

Without `PREFECT_API_URL`, Prefect starts a temporary local server for the run (run history is
kept in Prefect's own SQLite database under PREFECT_HOME, so `prefect server start` shows it
later). Its start-up and shutdown chatter is not for users; we keep Prefect's console logging at
warnings and show our own summary instead.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable


def quiet_prefect_console() -> None:
    """Keep Prefect's console output to warnings; logs still reach the Prefect API."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.server", "uvicorn", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Prefect's event and log workers warn while they drain at the end of a run ("Still processing
    # items"): routine, and noise on a terminal (and it would break a progress bar's line).
    for name in ("EventsWorker", "APILogWorker"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_flow_quietly(flow: Callable[..., Any], **parameters: Any) -> dict:
    """Run `flow` as a Prefect flow run in this process; return its summary dict with the run id."""
    from mage_dbt.heartbeats import engine_heartbeats_off

    quiet_prefect_console()
    with engine_heartbeats_off():  # the flow sends its own heartbeats, without a wait at the end
        state = flow(**parameters, return_state=True)
    run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    summary = state.data if isinstance(state.data, dict) else None
    if summary is None and run_id:
        from mage_dbt.settings import load_settings

        path = load_settings().data_dir / "runs" / run_id / "summary.json"
        if path.is_file():
            summary = json.loads(path.read_text())
    if summary is None:
        # The flow raised before producing a summary: surface its exception unchanged.
        state.result(raise_on_failure=True)
        raise RuntimeError(f"flow run {run_id} ended {state.type.value} without a summary: {state.message}")
    summary["flow_run_id"] = run_id
    summary["state"] = state.type.value
    return summary
