"""The dbt worker's start-up (issue 18): `mage-dbt run` and `mage-dbt backfill` start it before they
connect to Prefect, so its dbt import overlaps with the CLI's Prefect import; on the preload it
warms up what dbt's first invocation would pay before the first node; told to exit, it exits at
once with code 0. The run results themselves are compared across executors in test_executors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mage_dbt.errors import ConfigError


@pytest.mark.parametrize("verb", [
    ["run", "demo", "-d", "2024-02-01", "--target", "pg"],
    ["backfill", "demo", "--start", "2024-02-01", "--end", "2024-02-02", "--target", "pg"],
])
def test_the_dbt_worker_is_running_before_the_cli_connects_to_prefect(verb, demo_project, monkeypatch):
    from mage_dbt.cli import backfill_cmds, run_cli, run_cmds
    from mage_dbt.dbt import worker_executor

    seen = []

    def connect_prefect():  # stands in for the Prefect connection: records the worker, then stops the run
        worker = worker_executor._WORKER
        seen.append(worker is not None and worker.alive)
        raise ConfigError("stopped by the test before Prefect", hint="nothing to do")

    monkeypatch.setattr(run_cmds, "connect_prefect", connect_prefect)
    monkeypatch.setattr(backfill_cmds, "connect_prefect", connect_prefect)
    monkeypatch.chdir(demo_project)
    try:
        assert run_cli(verb) == 2
        assert seen == [True]  # the pg target's default executor is the worker, started first
        worker = worker_executor._WORKER
    finally:
        worker_executor._close_shared()
    assert worker.process.returncode == 0  # the "exit" request: the worker ends at once, cleanly


@pytest.mark.parametrize("adapter", ["postgres", "duckdb"])
def test_warm_up_does_what_the_first_dbt_invocation_would_pay_before_its_first_node(adapter):
    code = f"""
import importlib, inspect, json, sys
from mage_dbt.dbt.worker_process import warm_up
before = sorted(m for m in ("dbt.task.build", "dbt.adapters.{adapter}.impl") if m in sys.modules)
warm_up({adapter!r})
from dbt.contracts.project import Configuration, Project
cache = Project.json_schema.__func__
misses = cache.cache_info().misses
for schema_of in (Project, Configuration, importlib.import_module("dbt.adapters.{adapter}").Plugin.credentials):
    schema_of.json_schema()
print(json.dumps({{
    "before": before,
    "after": [m for m in ("dbt.task.build", "dbt_common.clients.agate_helper", "dbt.adapters.{adapter}.impl")
              if m in sys.modules],
    "new_schemas": cache.cache_info().misses - misses,
    "inspect_knows_the_adapter": "dbt.adapters.{adapter}.impl" in inspect._filesbymodname,
}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == {
        "before": [],  # nothing of it was loaded by importing the worker module
        "after": ["dbt.task.build", "dbt_common.clients.agate_helper", f"dbt.adapters.{adapter}.impl"],
        "new_schemas": 0,  # every schema dbt validates with was built by the warm-up
        "inspect_knows_the_adapter": True,
    }
