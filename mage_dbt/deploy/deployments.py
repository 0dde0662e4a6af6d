"""Pipelines as Prefect deployments: plan them from the pipeline files, then register them.

Every pipeline becomes one deployment of `pipeline_flow` named after the pipeline, carrying its
`schedule:` (cron or interval, with timezone), description and tags; a pipeline with a
`full_refresh_schedule:` gets a second deployment `<pipeline>-full-refresh` whose runs default to
`full_refresh: true`. Parameters are typed and documented (the Prefect UI renders them as a form and
the server rejects wrong types because `enforce_parameter_schema` is on; labels and the target
choice: `deploy/parameter_form.py`); the pipeline name is frozen per deployment. Scheduled runs leave `execution_date` empty, so the flow uses the run's
scheduled time. Secrets never become parameters: the pipeline's own `vars` stay in its file.

Registration goes through Prefect's own `RunnerDeployment.apply()`: re-deploying updates the same
deployment (same id) and replaces its schedules, so a schedule removed from the file is removed
from Prefect, and a `-full-refresh` deployment whose schedule was removed is deleted. Everything is
validated (pipeline files, schedules, server, work pool) before the first deployment is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mage_dbt.deploy.parameter_form import describe_parameters, target_choices
from mage_dbt.deploy.schedules import describe, to_prefect
from mage_dbt.deploy.triggers import deployment_triggers
from mage_dbt.errors import ConfigError
from mage_dbt.pipelines.policy_checks import check_policies, load_all_specs
from mage_dbt.pipelines.spec import ScheduleSpec, list_pipelines, load_pipeline_spec
from mage_dbt.settings import PROJECT_DIR_ENV, ProjectSettings

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

FULL_REFRESH_SUFFIX = "-full-refresh"
MANAGED_TAG = "mage-dbt"
SERVER_HINT = (
    "start a server with `mage-dbt server` (or `prefect server start`) and "
    "export PREFECT_API_URL=http://127.0.0.1:4200/api"
)


@dataclass(frozen=True)
class DeploymentPlan:
    """One deployment to register: which pipeline, with which schedule and defaults."""

    name: str
    pipeline: str
    full_refresh: bool
    schedule: ScheduleSpec | None
    description: str
    tags: tuple[str, ...]
    trigger_after: tuple[str, ...] = ()  # `trigger:` (deploy/triggers.py)
    trigger_on: str = "completed"

    @property
    def schedule_text(self) -> str:
        return describe(self.schedule)


@dataclass(frozen=True)
class DeployResult:
    name: str
    id: str
    schedule: str
    action: str  # "deployed" or "removed"


def plan_deployments(settings: ProjectSettings, names: list[str] | None = None) -> list[DeploymentPlan]:
    """The deployments for `names` (default: every pipeline in flows/); validates every file first."""
    names = list(dict.fromkeys(names or list_pipelines(settings.flows_dir)))
    if not names:
        raise ConfigError(
            f"no pipelines to deploy: {settings.flows_dir} has no <name>.yaml files",
            hint="create one, e.g. flows/daily.yaml (see README)",
        )
    plans: list[DeploymentPlan] = []
    specs = load_all_specs(settings.flows_dir)  # every file: triggers and shared limits span pipelines
    check_policies(settings.flows_dir, specs)
    for name in names:
        spec = specs.get(name) or load_pipeline_spec(settings.flows_dir, name)
        if spec.dbt is not None:
            settings.dbt_project_dir(spec.dbt.project)  # a missing dbt project fails here, not at 06:00
        tags = tuple(dict.fromkeys([MANAGED_TAG, *spec.tags]))
        description = " ".join(spec.description.split()) or f"mage_dbt pipeline {spec.name}"
        after = tuple(spec.trigger.after) if spec.trigger else ()
        plans.append(DeploymentPlan(spec.name, spec.name, False, spec.schedule, description, tags,
                                    trigger_after=after, trigger_on=spec.trigger.on if spec.trigger else "completed"))
        if spec.full_refresh_schedule is not None:
            plans.append(DeploymentPlan(
                name=spec.name + FULL_REFRESH_SUFFIX, pipeline=spec.name, full_refresh=True,
                schedule=spec.full_refresh_schedule,
                description=f"Scheduled full refresh (rebuilds incremental models) of: {description}",
                tags=(*tags, "full-refresh"),
            ))
    return plans


def stale_variants(plans: list[DeploymentPlan]) -> list[str]:
    """`<pipeline>-full-refresh` deployments that should no longer exist for the planned pipelines."""
    planned = {p.name for p in plans}
    pipelines = dict.fromkeys(p.pipeline for p in plans)
    return [p + FULL_REFRESH_SUFFIX for p in pipelines if p + FULL_REFRESH_SUFFIX not in planned]


def work_pool_job_variables(settings: ProjectSettings) -> dict[str, Any]:
    """Where a process worker runs the flow: in the project folder, which the flow also finds by env."""
    root = str(settings.root)
    return {"working_dir": root, "env": {PROJECT_DIR_ENV: root}}


def runner_deployment(
    settings: ProjectSettings, plan: DeploymentPlan, *, work_pool: str | None = None
) -> "RunnerDeployment":
    """The Prefect deployment object for `plan` (not registered yet)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.utilities.annotations import freeze

    from mage_dbt.flows import pipeline_flow

    deployment = pipeline_flow.to_deployment(
        name=plan.name,
        schedules=[to_prefect(plan.schedule)] if plan.schedule else [],
        parameters={"pipeline": freeze(plan.pipeline), "full_refresh": plan.full_refresh},
        description=plan.description,
        tags=list(plan.tags),
        enforce_parameter_schema=True,
        work_pool_name=work_pool,
        job_variables=work_pool_job_variables(settings) if work_pool else None,
        # The flow is imported from the installed package, so no source path or pull step is needed.
        entrypoint_type=EntrypointType.MODULE_PATH,
        triggers=deployment_triggers(plan.pipeline, plan.trigger_after, plan.trigger_on,
                                     variant_suffix=FULL_REFRESH_SUFFIX),
    )
    if work_pool is None:
        # An explicit None is sent on update: a deployment moved from a work pool to `serve` leaves the pool.
        deployment.work_pool_name = None
    # The form analysts fill in: readable labels, the profile's targets as a choice (parameter_form.py).
    describe_parameters(getattr(deployment, "_parameter_openapi_schema", None), *target_choices(settings, plan.pipeline))
    return deployment


def api_url() -> str:
    """The configured Prefect API URL; ConfigError saying how to start a server when there is none."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigError("no Prefect server configured: PREFECT_API_URL is not set", hint=SERVER_HINT)
    return url


def check_server() -> str:
    """The API URL after a health check; ConfigError naming the URL when the server does not answer."""
    from prefect.client.orchestration import get_client

    url = api_url()
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        reason = " ".join(str(problem).split())[:160] or type(problem).__name__
        raise ConfigError(f"the Prefect server at {url} is not reachable ({reason})", hint=SERVER_HINT)
    return url


def check_work_pool(name: str) -> str:
    """The type of work pool `name`; ConfigError with the command that creates it when it is missing."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_work_pool(name).type
        except ObjectNotFound:
            raise ConfigError(
                f"work pool {name!r} does not exist on the Prefect server",
                hint=f"create it with `prefect work-pool create {name} --type process`, "
                "or deploy without --work-pool and run `mage-dbt serve`",
            ) from None


def deploy(
    settings: ProjectSettings, names: list[str] | None = None, *, work_pool: str | None = None
) -> list[DeployResult]:
    """Register the deployments of `names` on the configured Prefect server (idempotent)."""
    plans = plan_deployments(settings, names)
    check_server()
    if work_pool:
        check_work_pool(work_pool)
    install_alerts = prepare_policies(settings, plans)  # a missing notify target stops the deploy here
    deployments = [(p, runner_deployment(settings, p, work_pool=work_pool)) for p in plans]
    results = [DeployResult(p.name, str(_apply(d)), p.schedule_text, "deployed") for p, d in deployments]
    alerts = [DeployResult(name, "-", "notify:", "alert installed") for name in install_alerts()]
    return results + alerts + remove_stale(plans)


def prepare_policies(settings: ProjectSettings, plans: list[DeploymentPlan]):
    """Check the plans' `notify:` targets on the server (ConfigError, file:line), create or update their
    concurrency limits; returns the step that installs their alerts (after the deployments exist)."""
    from mage_dbt.deploy.alerts import install_alerts, notify_targets

    specs = {name: load_pipeline_spec(settings.flows_dir, name) for name in dict.fromkeys(p.pipeline for p in plans)}
    block_ids = notify_targets(settings.flows_dir, specs)
    ensure_project_limits(settings, specs)
    return lambda: install_alerts(specs, block_ids)


def ensure_project_limits(settings: ProjectSettings, pipelines) -> None:
    """Create or update the global concurrency limits of `pipelines` and of mage_dbt.yaml's target_concurrency
    (DuckDB file limits are created by the first run on the file: a target's path may depend on the run)."""
    from mage_dbt.runs.concurrency import TARGET_PREFIX, Slot, ensure_limits, pipeline_slots

    slots = [s for name in pipelines for s in pipeline_slots(load_pipeline_spec(settings.flows_dir, name))]
    slots += [Slot(TARGET_PREFIX + t, k, f"dbt target '{t}'") for t, k in settings.file.target_concurrency.items()]
    ensure_limits(slots)


def _apply(deployment: "RunnerDeployment"):
    from prefect.deployments.runner import DeploymentApplyError

    try:
        return deployment.apply()
    except DeploymentApplyError as exc:
        raise ConfigError(
            f"Prefect refused deployment {deployment.name!r}: {' '.join(str(exc).split())}",
            hint="check the pipeline file's schedule and the server version (`prefect version`)",
        ) from None


def remove_stale(plans: list[DeploymentPlan]) -> list[DeployResult]:
    """Delete `-full-refresh` deployments (ours only) whose pipeline no longer has that schedule."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from mage_dbt.runs.history import FLOW_NAME

    removed = []
    with get_client(sync_client=True) as client:
        for name in stale_variants(plans):
            try:
                found = client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
            except ObjectNotFound:
                continue
            if MANAGED_TAG in (found.tags or []):
                client.delete_deployment(found.id)
                removed.append(DeployResult(name, str(found.id), "no full_refresh_schedule", "removed"))
    return removed
