"""Options shared by several commands, and how they turn into project settings."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mage_dbt.cli.console import err_console
from mage_dbt.settings import ProjectSettings, load_settings

ProjectDir = typer.Option(
    None, "--project-dir", "-C", help="The mage_dbt project (default: the nearest folder with mage_dbt.yaml)."
)
Target = typer.Option(None, "--target", "-t", help="dbt target from profiles.yml (default: the profile's).")

# The verbs that record or read flow runs in Prefect. Without PREFECT_API_URL they share the local
# Prefect server (mage_dbt.deploy.local_server) instead of starting a temporary one each; the others
# (pipelines, blocks, graph, status, output, sync, init, ...) never start a server.
PREFECT_VERBS = frozenset({"run", "retry", "backfill", "backfills", "full-refresh", "rebuild"})


def settings_for(project_dir: Optional[Path]) -> ProjectSettings:
    """The project's settings; for a Prefect verb, also the Prefect server it talks to."""
    settings = project_settings(project_dir)
    connect_prefect()
    return settings


def project_settings(project_dir: Optional[Path]) -> ProjectSettings:
    """The project's settings, exported to this process's environment (dbt and blocks read it).
    `run` and `backfill` start their dbt worker between this and `connect_prefect()`, so the
    worker's dbt import overlaps with our Prefect import (mage_dbt.dbt.worker_executor)."""
    settings = load_settings(project_dir)
    settings.export_environment()
    return settings


def connect_prefect() -> None:
    """For a Prefect verb: the shared local Prefect server (started if needed), or the server of
    PREFECT_API_URL, checked (one line, not a traceback, when it is down)."""
    if _current_verb() in PREFECT_VERBS:
        from mage_dbt.deploy.local_server import ensure_local_server

        if ensure_local_server(announce=lambda line: err_console.print(line, soft_wrap=True)) is None:
            from mage_dbt.cli.prefect_reachable import check_configured_server

            check_configured_server()


def _current_verb() -> Optional[str]:
    """The verb this process runs, from the click context (typer 0.2x+ carries its own click);
    tests/test_local_server.py fails if this stops finding it."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:
        from click import get_current_context
    ctx = get_current_context(silent=True)
    return ctx.info_name if ctx is not None else None


def parse_vars(items: list[str] | None) -> dict:
    """`--var key=value` pairs; values are read as YAML scalars (numbers, booleans, dates stay typed)."""
    import yaml

    from mage_dbt.errors import ConfigError

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--var '{item}' is not KEY=VALUE", hint="e.g. --var region=eu")
        out[key.strip()] = yaml.safe_load(value) if value else ""
    return out
