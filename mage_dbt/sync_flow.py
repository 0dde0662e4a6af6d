"""The Prefect flow that syncs the git repositories of dbt projects: `mage_dbt.sync_flow.sync_flow`.

Deployments name the flow by this module path (entrypoint `mage_dbt.sync_flow.sync_flow`), so the
flow is defined here and stays here; what it does (sync, with the dbt checks a new revision must
pass) is `mage_dbt.runs.project_sync`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from mage_dbt.runs.project_sync import run_sync

SYNC_FLOW_NAME = "mage-dbt-sync"


def _sync_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"sync-{params.get('name') or 'all'}" + (f"@{params['ref']}" if params.get("ref") else "")


@flow(name=SYNC_FLOW_NAME, flow_run_name=_sync_run_name, validate_parameters=True, persist_result=False)
def sync_flow(name: str | None = None, ref: str | None = None, force: bool = False) -> list[dict[str, Any]]:
    """Sync git repositories of dbt projects into dbt_projects/ (a new revision must parse first).

    Args:
        name: The repository to sync (its name in git_sync/repositories.yaml); empty syncs all.
        ref: Branch, tag or commit SHA to switch to; empty uses the configured ref.
        force: Discard local edits in the synced folder instead of refusing.
    """
    return run_sync(name, ref, force)
