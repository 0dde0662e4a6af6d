"""How the CLI talks to Prefect: run a flow in this process and get its summary back, quietly.

Without `PREFECT_API_URL`, the CLI's Prefect verbs use the shared local server of
`mage_dbt.deploy.local_server` (Prefect's own SQLite database under PREFECT_HOME); with
MAGE_DBT_LOCAL_SERVER=0 (or outside the CLI) Prefect starts a temporary server per process, which
gets a start-up timeout that a fresh database on a slow machine fits in. Prefect's start-up and
shutdown chatter is not for users; we keep its console logging at warnings and show our own
summary instead.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

EPHEMERAL_STARTUP_TIMEOUT = 180  # seconds


def quiet_prefect_console() -> None:
    """Keep Prefect's console output to warnings; logs still reach the Prefect API."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Prefect gives its temporary server 20 s; creating a fresh database on a busy 2-core machine
    # takes longer, and the run then dies with "Timed out while attempting to connect".
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_STARTUP_TIMEOUT))
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.server", "uvicorn", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Prefect's event and log workers warn while they drain at the end of a run ("Still processing
    # items"): routine, and noise on a terminal (and it would break a progress bar's line).
    for name in ("EventsWorker", "APILogWorker"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_flow_quietly(flow: Callable[..., Any], **parameters: Any) -> dict:
    """Run `flow` as a Prefect flow run in this process; return its summary dict with the run id."""
    from mage_dbt.errors import ConfigError
    from mage_dbt.runs.heartbeats import engine_heartbeats_off

    quiet_prefect_console()
    try:
        with engine_heartbeats_off():  # the flow sends its own heartbeats, without a wait at the end
            state = flow(**parameters, return_state=True)
    except RuntimeError as exc:
        if "ephemeral Prefect API server" not in str(exc):
            raise
        raise ConfigError(
            f"Prefect's temporary server did not start: {' '.join(str(exc).split())[:300]}",
            hint="unset MAGE_DBT_LOCAL_SERVER to use the shared local server, set PREFECT_API_URL to a "
            "running Prefect server, or raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
        ) from None
    run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    summary = state.data if isinstance(state.data, dict) else None
    if summary is None and run_id:
        from mage_dbt.settings import load_settings

        path = load_settings().data_dir / "runs" / run_id / "summary.json"
        if path.is_file():
            summary = json.loads(path.read_text())
    if summary is None and state.is_cancelled():
        from mage_dbt.runs.interrupts import interrupted

        if interrupted():  # Ctrl-C before any block ran: the CLI says "interrupted", exit 130
            raise KeyboardInterrupt
    if summary is None:
        # The flow raised before producing a summary: surface its exception unchanged.
        state.result(raise_on_failure=True)
        raise RuntimeError(f"flow run {run_id} ended {state.type.value} without a summary: {state.message}")
    summary["flow_run_id"] = run_id
    summary["state"] = state.type.value
    return summary
