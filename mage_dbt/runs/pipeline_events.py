"""mage_dbt's own Prefect events: what a pipeline run finds or finishes that no flow-run state says.

`mage-dbt.pipeline.drift-found` (a run found incremental models whose table no longer matches) and
`mage-dbt.pipeline.backfill-finished` (a backfill ended), both about the resource
`mage-dbt.pipeline.<name>`, with the flow run as a related resource (so an automation's templates can
read `flow_run`) and a payload the alert message quotes: `execution_date`, `message` and `next` (the
command to run next). `mage_dbt.deploy.alerts` installs automations on them for `notify:`.
"""

from __future__ import annotations

from typing import Any

DRIFT_FOUND = "mage-dbt.pipeline.drift-found"
BACKFILL_FINISHED = "mage-dbt.pipeline.backfill-finished"


def pipeline_resource(pipeline: str) -> dict[str, str]:
    return {"prefect.resource.id": f"mage-dbt.pipeline.{pipeline}", "prefect.resource.name": pipeline}


def emit_pipeline_event(event: str, pipeline: str, payload: dict[str, Any], flow_run_id: str | None) -> None:
    """Emit `event` about `pipeline` (best effort: an alert must never fail the run)."""
    from prefect.events import emit_event

    related = ([{"prefect.resource.id": f"prefect.flow-run.{flow_run_id}", "prefect.resource.role": "flow-run"}]
               if flow_run_id else [])
    try:
        emit_event(event=event, resource=pipeline_resource(pipeline), related=related,
                   payload={k: "" if v is None else str(v) for k, v in payload.items()})
    except Exception:  # noqa: BLE001
        pass
