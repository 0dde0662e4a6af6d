"""Pipelines on a Prefect server: deployments, schedules, prefect.yaml, serve, the local server.

* `deployments` — plan and register one deployment per pipeline (and per scheduled full refresh);
* `schedules` — a pipeline's schedules as Prefect `Schedule`s and one-line descriptions;
* `parameter_form` — the deployment's parameter form: labels, the profile's targets, the date picker;
* `prefect_yaml` — the same deployments written as a `prefect.yaml`;
* `serve` — serve the deployments from this process, or start a server;
* `local_server` — the shared local Prefect server of the embedded default (start, record, status,
  stop); `server_process` — its record and its supervisor process.
"""
