"""Grouped execution: the demo's dbt blocks run as ONE in-process dbt invocation on the cached
manifest, with one Prefect task run per node in dbt's own final state; later runs (other
processes) never parse again; dbt invocations never overlap inside one process."""

from __future__ import annotations

import json
import pickle
import threading

import duckdb

from tests.conftest import cli
from tests.support import demo_data
from tests.support.dbt_changes import DEMO, executions, run_results, states, task_run_logs, write
from tests.support.runs import flow_run_id, task_runs

# dbt status -> (Prefect state type, state name) of the node's task run
PREFECT_STATE = {
    "success": ("COMPLETED", "Completed"),
    "pass": ("COMPLETED", "Completed"),
    "warn": ("COMPLETED", "Warn"),
    "error": ("FAILED", "Failed"),
    "fail": ("FAILED", "Failed"),
    "skipped": ("CANCELLED", "Skipped"),
}


def _add_external_source(project):
    """A source table that exists before the run, a source test and a model reading it: compiling
    `source()` from the cached manifest is what dbt 1.11's own Manifest pickling broke."""
    with duckdb.connect(str(project / ".mage_dbt" / "demo.duckdb")) as conn:
        conn.execute("create schema ext; create table ext.events as select range as id from range(7)")
    write(project, f"{DEMO}/models/ext/_ext.yml", json.dumps({
        "version": 2,
        "sources": [{"name": "ext", "schema": "ext", "tables": [
            {"name": "events", "columns": [{"name": "id", "data_tests": ["not_null"]}]}]}],
    }))
    write(project, f"{DEMO}/models/ext/ext_event_count.sql", "select count(*) as n from {{ source('ext', 'events') }}\n")
    write(project, f"{DEMO}/tests/warn_on_orders.sql",
          "{{ config(severity='warn') }}\nselect * from {{ ref('stg_orders') }} limit 1\n")


def test_dbt_blocks_run_as_one_invocation_with_a_task_run_per_node_in_dbts_state(demo_project):
    (demo_project / ".mage_dbt").mkdir()
    _add_external_source(demo_project)

    first = cli(demo_project, "run", "demo", "--execution-date", "2024-02-01")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run_id = flow_run_id(first.stdout)
    summary = json.loads((demo_project / ".mage_dbt" / "runs" / run_id / "summary.json").read_text())
    dbt_blocks = {n: r for n, r in summary["results"].items() if r["kind"].startswith("dbt_") and r["unique_id"]}

    # The invocation log: one parse (cold cache), then ONE build carrying every dbt node of the run.
    log = executions(demo_project)
    assert [r["command"] for r in log] == ["parse", "build"], log
    build = log[1]
    assert build["nodes"] == len(dbt_blocks) and build["cached_manifest"] is True, build
    assert summary["dbt_invocations"] == 1

    # One task run per block, none missing; each dbt node's task run ends in dbt's own status.
    runs = task_runs(run_id)
    assert set(runs) == set(summary["results"])
    dbt_status = run_results(demo_project, build["pid"])
    name_of = {r["unique_id"]: n for n, r in dbt_blocks.items()}
    assert set(dbt_status) == set(name_of)
    got = states(runs)
    assert {name_of[u]: got[name_of[u]] for u in dbt_status} == {name_of[u]: PREFECT_STATE[s] for u, s in dbt_status.items()}
    assert dbt_status["test.demo.warn_on_orders"] == "warn"
    assert got["warn_on_orders"] == ("COMPLETED", "Warn")
    assert got["source_not_null_ext_events_id"] == ("COMPLETED", "Completed")
    assert got["ext_event_count"] == ("COMPLETED", "Completed")

    # dbt's rows affected reach the node's task run log.
    assert any(f"{len(demo_data.orders())} rows" in m for m in task_run_logs(runs["raw_orders"].id))

    # A second run, in a new process: no parse at all, again one build with every node.
    second = cli(demo_project, "run", "demo", "--execution-date", "2024-02-02")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    log = executions(demo_project)
    assert [r["command"] for r in log] == ["parse", "build", "build"], log
    assert log[2]["pid"] != build["pid"] and log[2]["nodes"] == len(dbt_blocks) and log[2]["cached_manifest"]
    # dbt's artifacts of the ended first run were removed; only the second run's folder is left.
    artifact_folders = sorted(p.name for p in (demo_project / ".mage_dbt" / "dbt_target").glob("*/*"))
    assert artifact_folders == [f"default-{log[2]['pid']}"], artifact_folders  # no --target: 'default'
    artifacts = demo_project / ".mage_dbt" / "dbt_target" / "demo" / artifact_folders[0]
    assert json.loads((artifacts / "run_results.json").read_text())["results"]  # for `dbt retry`
    assert list((demo_project / ".mage_dbt" / "manifest_cache").glob("*/manifest.json"))


def test_the_manifest_cache_pickles_dbts_manifest_intact():
    """dbt 1.11's Manifest.__reduce_ex__ drops `fixtures` and shifts every lookup by one field."""
    from dbt.contracts.graph.manifest import Manifest

    from mage_dbt.dbt.manifest_pickle import dumps

    manifest = Manifest()
    manifest.fixtures = {"fixture.demo.orders": "orders fixture"}
    assert type(manifest.source_lookup).__name__ == "SourceLookup"  # built, as after a parse
    assert type(manifest.ref_lookup).__name__ == "RefableLookup"

    back = pickle.loads(dumps(manifest))
    assert back.fixtures == {"fixture.demo.orders": "orders fixture"}
    assert type(back.source_lookup).__name__ == "SourceLookup"
    assert type(back.ref_lookup).__name__ == "RefableLookup"
    assert type(back.doc_lookup).__name__ == "DocLookup"


class _WatchedLock:
    """The process-wide dbt lock, instrumented: records which threads wait for it."""

    def __init__(self):
        self._lock = threading.RLock()
        self.waiting: dict[str, threading.Event] = {}

    def __enter__(self):
        self.waiting.setdefault(threading.current_thread().name, threading.Event()).set()
        self._lock.acquire()
        return self

    def __exit__(self, *exc):
        self._lock.release()


def test_dbt_invocations_never_run_concurrently_in_one_process(monkeypatch):
    import dbt.cli.main

    from mage_dbt.dbt import invocation as dbt_invocation

    lock = _WatchedLock()
    monkeypatch.setattr(dbt_invocation, "_DBT_LOCK", lock)
    events: list[str] = []
    active = {"now": 0, "max": 0}
    a_inside, release_a = threading.Event(), threading.Event()

    class FakeRunner:  # stands in for dbtRunner: records overlap, holds thread A inside dbt
        def __init__(self, manifest=None, callbacks=()):
            pass

        def invoke(self, args):
            me = threading.current_thread().name
            active["now"] += 1
            active["max"] = max(active["max"], active["now"])
            events.append(f"{me} in")
            if me == "A":
                a_inside.set()
                assert release_a.wait(60)
            events.append(f"{me} out")
            active["now"] -= 1
            return type("Result", (), {"success": True})()

    monkeypatch.setattr(dbt.cli.main, "dbtRunner", FakeRunner)
    a = threading.Thread(target=dbt_invocation.invoke_dbt, args=(["build"],), name="A")
    b = threading.Thread(target=dbt_invocation.invoke_dbt, args=(["run"],), name="B")
    a.start()
    assert a_inside.wait(60)
    b.start()
    lock.waiting.setdefault("B", threading.Event())
    assert lock.waiting["B"].wait(60)  # B reached the lock while A is inside dbt
    assert events == ["A in"]  # ... and could not enter
    release_a.set()
    a.join(60)
    b.join(60)
    assert events == ["A in", "A out", "B in", "B out"]
    assert active["max"] == 1
