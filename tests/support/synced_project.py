"""Helpers for the git sync CLI/run tests: a demo project whose dbt project comes from a git remote.

`push_project` turns a folder (the demo dbt project) into a commit on a local bare repository;
`configure` writes `git_sync/repositories.yaml`; the rest reads what a sync or a run left behind
(the current revision, the dbt invocation log, flow run tags and logs through the Prefect API).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from tests.gitsync_fixtures import RemoteRepo

# A one-model dbt project on the demo profile (DuckDB file in the project's data folder).
TINY = {
    "dbt_project.yml": "name: tiny\nversion: '1.0'\nconfig-version: 2\nprofile: mage_dbt_demo\n",
    "models/git_marker.sql": "select 'v1' as version\n",
}
BROKEN = {"models/broken.sql": "select * from {{ ref('does_not_exist') }}\n"}


def push_project(remotes: Path, name: str, source: Path | None = None, files: dict | None = None) -> RemoteRepo:
    """A bare remote `<remotes>/<name>.git` whose main holds `source`'s files (or `files`)."""
    remote = RemoteRepo.create(remotes, name)
    if source is not None:
        ignore = shutil.ignore_patterns("target", "logs", "dbt_packages", "__pycache__")
        shutil.copytree(source, remote.work, dirs_exist_ok=True, ignore=ignore)
    remote.commit("initial dbt project", files)
    remote.push("main")
    return remote


def configure(project: Path, *repositories: dict) -> None:
    (project / "git_sync").mkdir(exist_ok=True)
    (project / "git_sync" / "repositories.yaml").write_text(yaml.safe_dump({"repositories": list(repositories)}))


def write_pipeline(project: Path, name: str, dbt_project: str, select: list[str], **extra) -> None:
    data = {"dbt": {"project": dbt_project, "select": select}, **extra}
    (project / "flows" / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def current_commit(project: Path, destination: str) -> str | None:
    from mage_dbt.git_sync import revision_commit

    return revision_commit(project / "dbt_projects" / destination)


def invocations(project: Path, command: str) -> int:
    """How many dbt invocations of `command` the project's invocation log records."""
    log = project / ".mage_dbt" / "logs" / "dbt_invocations.jsonl"
    if not log.is_file():
        return 0
    return sum(1 for line in log.read_text().splitlines() if json.loads(line)["command"] == command)


def one_line_error(result) -> str:
    """The CLI failed as a user error: exit 2, one `error:` line on stderr, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def flow_run_logs(flow_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                limit=200, offset=0)
    return [log.message for log in logs]
