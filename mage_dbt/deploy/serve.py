"""Local Prefect processes: serve the pipeline deployments from this process, or start a server.

`serve_pipelines` registers the deployments (the same ones `mage-dbt deploy` makes, without a work
pool) and hands them to `prefect.serve`: this one process then polls the server and runs every
scheduled or UI-triggered run of those deployments in a subprocess, in the project folder. A team
can start with this and move to work pools and workers later without changing the pipelines.

`server_command` is the `prefect server start` command line for `mage-dbt server`, with the UI
pointed at the same host and port (the bundled UI otherwise calls 127.0.0.1:4200) and the
database taken from Prefect's own settings (SQLite under PREFECT_HOME unless
PREFECT_API_DATABASE_CONNECTION_URL names e.g. postgresql+asyncpg://user@host/db).
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mage_dbt.deploy.deployments import (
    check_server, plan_deployments, prepare_policies, remove_stale, runner_deployment,
)
from mage_dbt.settings import PROJECT_DIR_ENV, ProjectSettings

DATABASE_ENV = "PREFECT_API_DATABASE_CONNECTION_URL"


def serve_pipelines(
    settings: ProjectSettings, names: list[str] | None = None, *, limit: int = 1, announce=print
) -> None:
    """Register the deployments of `names` and run their flow runs from this process until stopped.

    `limit` caps concurrent runs: one by default, because a DuckDB file takes one writer at a time.
    """
    from prefect import serve
    from prefect.settings import PREFECT_LOGGING_LEVEL, temporary_settings

    plans = plan_deployments(settings, names)
    url = check_server()
    install_alerts = prepare_policies(settings, plans)  # concurrency limits; notify targets exist
    # Flow runs start in subprocesses from this folder's project, wherever they are triggered from.
    os.environ[PROJECT_DIR_ENV] = str(settings.root)
    os.chdir(settings.root)
    deployments = [runner_deployment(settings, p) for p in plans]
    for name in install_alerts():
        announce(f"alert installed: {name}")
    for removed in remove_stale(plans):
        announce(f"removed deployment {removed.name} ({removed.schedule})")
    from mage_dbt.deploy.zombie_runs import ensure_and_say

    ensure_and_say(announce)  # runs whose process dies: Crashed by Prefect on missed heartbeats
    for plan in plans:
        announce(f"serving {plan.name}: {plan.schedule_text}")
    announce(f"runs execute here (at most {limit} at a time); Prefect UI: {ui_url(url)}; stop with Ctrl+C")
    # The CLI keeps its own console quiet; flow runs still send their INFO logs to the Prefect UI.
    with temporary_settings(updates={PREFECT_LOGGING_LEVEL: "INFO"}), warnings.catch_warnings():
        # Prefect 3.8's shutdown on SIGTERM leaves one coroutine un-awaited and says so; harmless.
        warnings.filterwarnings("ignore", message="coroutine 'Runner.astop' was never awaited")
        serve(*deployments, limit=limit, print_starting_message=False)


def ui_url(api_url: str) -> str:
    """The UI address that belongs to an API URL (`.../api` → `...`)."""
    return api_url[: -len("/api")] if api_url.rstrip("/").endswith("/api") else api_url


def server_command(host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """The `prefect server start` command line and environment for `mage-dbt server`."""
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or shutil.which("prefect")
    argv = [prefect or "prefect", "server", "start", "--host", host, "--port", str(port)]
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    env = dict(os.environ)
    env.setdefault("PREFECT_UI_API_URL", f"http://{shown_host}:{port}/api")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.pop("PREFECT_API_URL", None)  # the server itself must not talk to another server
    return argv, env


def describe_database(env: dict[str, str]) -> str:
    """Where the server keeps its state, with any password masked."""
    url = env.get(DATABASE_ENV)
    if not url:
        home = env.get("PREFECT_HOME") or str(Path.home() / ".prefect")
        return f"SQLite at {home}/prefect.db (set {DATABASE_ENV} for PostgreSQL)"
    return mask_password(url)


def mask_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
