"""`trigger: {after: [...], on: completed}`: a pipeline's deployment runs when another pipeline's run completes.

Each pipeline in `after` becomes one Prefect deployment trigger (an automation the server owns and
runs: `RunnerDeployment.apply()` replaces them on every deploy) on the pipeline's deployment: when a
flow run of the pipeline flow from the upstream pipeline's deployment (or its `-full-refresh`
variant) enters Completed, the server creates a run of this deployment whose `execution_date` is
the upstream run's: its `execution_date` parameter, or, for a scheduled run that left it empty,
its scheduled start time (which is the date that run processed, `runs.pipeline_run.scheduled_time`).
With several pipelines in `after`, a run of any of them starts one run.
"""

from __future__ import annotations

from typing import Any

# The upstream run's execution date, rendered by the server from the triggering flow run.
EXECUTION_DATE_TEMPLATE = (
    "{{ flow_run.parameters.get('execution_date') or flow_run.expected_start_time.isoformat() }}"
)
STATES = {"completed": "Completed"}


def deployment_triggers(pipeline: str, after: tuple[str, ...], on: str = "completed", *,
                        variant_suffix: str = "-full-refresh") -> list[Any]:
    """The `DeploymentEventTrigger`s of a pipeline run after each of `after`."""
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    from mage_dbt.runs.history import FLOW_NAME

    return [
        DeploymentEventTrigger(
            name=f"mage-dbt: run {pipeline} after {upstream} {on}",
            description=f"Created by mage-dbt deploy from {pipeline}'s `trigger:`: a {on} run of {upstream} "
                        f"starts {pipeline} with the same execution date.",
            enabled=True,
            expect={f"prefect.flow-run.{STATES[on]}"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=[
                {"prefect.resource.role": "flow", "prefect.resource.name": FLOW_NAME},
                {"prefect.resource.role": "deployment",
                 "prefect.resource.name": [upstream, upstream + variant_suffix]},
            ],
            parameters={"execution_date": {"__prefect_kind": "jinja", "template": EXECUTION_DATE_TEMPLATE}},
        )
        for upstream in after
    ]
