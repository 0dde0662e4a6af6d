"""Which dbt executor a run uses: the project's `dbt_executor` setting (mage_dbt.yaml).

`in_process`: dbt in this process on the cached manifest (`mage_dbt.dbt.executor`).
`json_log`: the dbt CLI as a subprocess, read through its JSON log (`mage_dbt.dbt.json_log_executor`).
`worker`: the in-process machinery in a dbt worker process started with the run, node events
streamed back over a pipe (`mage_dbt.dbt.worker_executor`).
`auto` (the default): `worker` for a `mage-dbt run` or `mage-dbt backfill` started from the CLI on a
warehouse that takes several connections (Postgres, BigQuery): the CLI starts the worker first thing,
so dbt's import and manifest load overlap the CLI's Prefect start-up, and dbt's threads never share
a GIL with the run's Prefect reporting. Measured on Postgres: a 30-day microbatch backfill
(`bench_microbatch.py` variants b and i) and, once the CLI stopped importing dbt for a repeated
selection and for profiles.yml (2026-12-05: `mage_dbt.dbt.selection_cache`,
`mage_dbt.warehouse.profile_light`), a 200-model `mage-dbt run` (bench_dbt: w/b 0.92, bench/README.md).
Flow runs started elsewhere (deployments, `serve`, Prefect workers) keep `auto` in-process: nothing
starts a worker ahead of them, so there is no start-up to overlap.

DuckDB takes one writing process per database file, and with the worker two processes of one run
open it: the worker for the dbt groups, the run's own process for Python/SQL blocks and dbt's
drift-check compile (dbt-duckdb keeps its database open for the life of a process). Backfills and
rebuilds on DuckDB with `worker` failed with "Could not set lock on file" (tests/test_microbatch.py,
test_rebuild.py, test_backfill_resume.py run with MAGE_DBT_DBT_EXECUTOR=worker, 2026-12-05). So on
DuckDB `worker` falls back to `in_process`, with a warning when it was asked for by name.
`target_adapter` reads the adapter type from profiles.yml as plain YAML, before dbt is imported, so
the CLI can start the worker first thing; a profile that needs rendering (Jinja in `target:` or
`type:`) gives None, and `auto` then stays `in_process`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from mage_dbt.dbt.executor import DbtExecutor, InProcessDbtExecutor
from mage_dbt.errors import ConfigError

EXECUTORS = ("auto", "in_process", "json_log", "worker")
LOG = logging.getLogger("mage_dbt.executor")


def check_executor(name: str | None) -> None:
    """A ConfigError naming the choices when `name` is not an executor."""
    if name not in (None, *EXECUTORS):
        raise ConfigError(f"unknown dbt_executor '{name}' (mage_dbt.yaml or MAGE_DBT_DBT_EXECUTOR)",
                          hint=f"use one of: {', '.join(EXECUTORS)}")


def resolve_executor(name: str | None, adapter: str | None, *, warn: bool = True) -> str:
    """The executor a run uses for setting `name` on `adapter` (see the module docstring)."""
    check_executor(name)
    if name in (None, "auto"):
        return "worker" if adapter not in (None, "duckdb") else "in_process"
    if name == "worker" and adapter == "duckdb":
        if warn:
            LOG.warning("dbt_executor: worker is not used on DuckDB (one process per database file: the run's "
                        "other blocks must open it too); dbt runs in this process")
        return "in_process"
    return name


def executor_for(name: str | None, adapter: str | None = None) -> DbtExecutor:
    """The executor for setting `name` on `adapter`; a ConfigError naming the choices otherwise."""
    name = resolve_executor(name, adapter)
    if name == "json_log":
        from mage_dbt.dbt.json_log_executor import SubprocessJsonDbtExecutor

        return SubprocessJsonDbtExecutor()
    if name == "worker":
        from mage_dbt.dbt.worker_executor import WorkerDbtExecutor

        return WorkerDbtExecutor()
    return InProcessDbtExecutor()


def target_adapter(profiles_dir: Path, project_dir: Path, target: str | None) -> str | None:
    """The `type:` of the dbt target a run will use, read as plain YAML; None when it cannot be told."""
    try:
        project = yaml.safe_load((project_dir / "dbt_project.yml").read_text()) or {}
        profiles = yaml.safe_load((profiles_dir / "profiles.yml").read_text()) or {}
        profile = profiles[project["profile"]]
        name = target or profile.get("target", "default")
        kind = profile["outputs"][name]["type"]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(kind, str) or "{" in kind or "{" in str(name):
        return None
    return kind


def executor_for_pipeline(name: str | None, pipeline) -> DbtExecutor:
    """The executor for setting `name` in a run of a loaded pipeline. Only `worker` depends on the
    target's adapter (never on DuckDB), so profiles.yml is read for that setting alone."""
    ref = getattr(pipeline, "dbt_ref", None)
    adapter = target_adapter(ref.profiles_dir, ref.project_dir, ref.target) if name == "worker" and ref else None
    return executor_for(name, adapter)

