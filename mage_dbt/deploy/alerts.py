"""`notify:` in a pipeline file, installed by `mage-dbt deploy` as Prefect automations.

One automation per `notify:` entry of a pipeline (`mage-dbt: notify <pipeline> #<n>`, plus `#<n>
drift_found` / `#<n> backfill_finished` for those outcomes), replaced on every deploy (entries removed
from the file are removed from the server). Its trigger: a flow run of the pipeline flow named
`<pipeline>-<date>` (every run of the pipeline: CLI, deployment, backfill, retry) entering one of the
chosen states, or mage_dbt's own event about the pipeline (`runs.pipeline_events`: drift found, backfill
finished); its action: Prefect's `SendNotification`, whose subject
and body the server renders from the flow run: the pipeline, the execution date, the outcome, the
state message (a failed run's message names its failed blocks with their first error line:
`runs.pipeline_run.first_errors`) and the exact retry command.

Where it goes: `block: <block type>/<name>`, an existing Prefect notification block, or
`webhook_secret: <name>`, a Prefect Secret block holding a webhook URL. The URL never reaches the
pipeline file, the automation or a log: deploy keeps it in a `custom-webhook` notification block
(`mage-dbt-webhook-<secret name>`, the URL in its secret fields) and the automation's action holds
only that block's id. A target that does not exist fails the deploy with the file and line of its
`notify:` entry, before anything is registered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mage_dbt.errors import ConfigError
from mage_dbt.pipelines.policy_checks import where

AUTOMATION_PREFIX = "mage-dbt: notify "
WEBHOOK_BLOCK_PREFIX = "mage-dbt-webhook-"
EVENTS = {
    "failed": "prefect.flow-run.Failed",
    "crashed": "prefect.flow-run.Crashed",
    "timed_out": "prefect.flow-run.TimedOut",
}
# mage_dbt's own events (runs/pipeline_events.py) for what no flow-run state says.
CUSTOM = {"drift_found": "mage-dbt.pipeline.drift-found", "backfill_finished": "mage-dbt.pipeline.backfill-finished"}
CUSTOM_SUBJECT = "mage-dbt: pipeline {pipeline}: {outcome}"
CUSTOM_BODY = """pipeline: {pipeline}
outcome: {outcome}
execution date: {{{{ event.payload.execution_date }}}}
{{{{ event.payload.message }}}}
next: {{{{ event.payload.next }}}}"""
SUBJECT = "mage-dbt: pipeline {pipeline} {{{{ flow_run.state.name }}}} ({{{{ flow_run.name }}}})"
BODY = """pipeline: {pipeline}
execution date: {{{{ flow_run.parameters.get('execution_date') or flow_run.expected_start_time.isoformat() }}}}
outcome: {{{{ flow_run.state.name }}}}
{{{{ flow_run.state.message }}}}
retry: mage-dbt retry --run {{{{ flow_run.id }}}}
flow run: {{{{ flow_run.id }}}}"""


def notify_targets(flows_dir: Path, specs: dict[str, Any]) -> dict[tuple[str, int], str]:
    """The notification block id of every `notify:` entry of `specs`, (pipeline, index) -> id; a missing
    block is a ConfigError naming the entry's file and line. Webhook secrets get their webhook block here."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    ids: dict[tuple[str, int], str] = {}
    with get_client(sync_client=True) as client:
        for name, spec in specs.items():
            for index, entry in enumerate(spec.notify):
                key = "block" if entry.block else "webhook_secret"
                slug, block_name = entry.block.split("/", 1) if entry.block else ("secret", entry.webhook_secret)
                try:
                    document = client.read_block_document_by_name(block_name, slug, include_secrets=False)
                except ObjectNotFound:
                    raise ConfigError(
                        f"{where(flows_dir, name, ['notify', index, key])}: notify target: no Prefect "
                        f"{slug} block named '{block_name}' on the server",
                        hint=(f"create it first, e.g. `prefect block create {slug}`" if entry.block else
                              f"create it with: from prefect.blocks.system import Secret; "
                              f"Secret(value='https://...').save('{block_name}')"),
                    ) from None
                ids[(name, index)] = str(document.id)
    for name, spec in specs.items():  # all exist: only now is anything written
        for index, entry in enumerate(spec.notify):
            if entry.webhook_secret:
                ids[(name, index)] = _webhook_block(entry.webhook_secret)
    return ids


def _webhook_block(secret_name: str) -> str:
    """The id of the `custom-webhook` block that posts to the URL held by Secret block `secret_name`."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.blocks.system import Secret

    url = Secret.load(secret_name).get()
    block = CustomWebhookNotificationBlock(
        name=f"mage-dbt alerts via secret {secret_name}", url="{{url}}", method="POST",
        json_data={"subject": "{{subject}}", "text": "{{body}}"}, secrets={"url": str(url)},
    )
    return str(block.save(WEBHOOK_BLOCK_PREFIX + secret_name, overwrite=True))


def alert_automations(spec: Any, block_ids: dict[tuple[str, int], str]) -> list[Any]:
    """The `AutomationCore`s of `spec`'s `notify:` entries."""
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    from mage_dbt.runs.history import FLOW_NAME

    automations = []
    for index, entry in enumerate(spec.notify):
        events = {EVENTS[o] for o in entry.on if o in EVENTS}
        automations += [_custom_automation(spec.name, index, outcome, block_ids[(spec.name, index)])
                        for outcome in entry.on if outcome in CUSTOM]
        if not events:
            continue
        automations.append(AutomationCore(
            name=f"{AUTOMATION_PREFIX}{spec.name} #{index + 1}",
            description=f"Created by mage-dbt deploy from {spec.name}'s `notify:` ({', '.join(entry.on)}).",
            enabled=True,
            trigger=EventTrigger(
                expect=events,
                # Run names are `<pipeline>-<execution date>` (mage_dbt.flows): every run of this pipeline.
                match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*",
                                             "prefect.resource.name": [f"{spec.name}-1*", f"{spec.name}-2*"]}),
                match_related=ResourceSpecification({"prefect.resource.role": "flow",
                                                     "prefect.resource.name": FLOW_NAME}),
                posture=Posture.Reactive, threshold=1,
            ),
            actions=[SendNotification(block_document_id=block_ids[(spec.name, index)],
                                      subject=SUBJECT.format(pipeline=spec.name),
                                      body=BODY.format(pipeline=spec.name))],
        ))
    return automations


def _custom_automation(pipeline: str, index: int, outcome: str, block_id: str) -> Any:
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    said = outcome.replace("_", " ")
    return AutomationCore(
        name=f"{AUTOMATION_PREFIX}{pipeline} #{index + 1} {outcome}",
        description=f"Created by mage-dbt deploy from {pipeline}'s `notify:` ({outcome}).",
        enabled=True,
        trigger=EventTrigger(expect={CUSTOM[outcome]},
                             match=ResourceSpecification({"prefect.resource.id": f"mage-dbt.pipeline.{pipeline}"}),
                             posture=Posture.Reactive, threshold=1),
        actions=[SendNotification(block_document_id=block_id,
                                  subject=CUSTOM_SUBJECT.format(pipeline=pipeline, outcome=said),
                                  body=CUSTOM_BODY.format(pipeline=pipeline, outcome=said))],
    )


def install_alerts(specs: dict[str, Any], block_ids: dict[tuple[str, int], str]) -> list[str]:
    """Replace the alert automations of the pipelines in `specs` on the server; the names installed."""
    from prefect.client.orchestration import get_client

    installed = []
    with get_client(sync_client=True) as client:
        existing = client.read_automations()
        for name, spec in specs.items():
            for automation in existing:
                if automation.name.startswith(f"{AUTOMATION_PREFIX}{name} #"):
                    client.delete_automation(automation.id)
            for automation in alert_automations(spec, block_ids):
                client.create_automation(automation)
                installed.append(automation.name)
    return installed
