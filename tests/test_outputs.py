"""Data products: block outputs stored per run as Parquet or JSON, read back in other processes and by
a retried run (fallback run ids), previewed with `mage-dbt output`, pruned after the retention."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pyarrow as pa
import pytest

from mage_dbt.blocks.outputs import OutputNotFound, OutputStore, find_output, list_runs, prune_runs
from mage_dbt.errors import MageDbtError
from tests.conftest import cli
from tests.support.block_pipelines import statuses, summary, write_pipeline


def test_values_round_trip_with_their_types(tmp_path):
    store = OutputStore(tmp_path, "p", "run-1")
    frame = pd.DataFrame({"id": [1, 2], "when": pd.to_datetime(["2024-01-01", "2024-01-02"], utc=True),
                          "amount": [1.5, None]}, index=pd.Index(["a", "b"], name="key"))
    store["frame"] = frame
    store["table"] = pa.table({"x": [1, 2, 3]})
    store["series"] = pd.Series([3, 4], name="n")
    store["plain"] = {"day": dt.date(2024, 1, 2), "total": decimal.Decimal("1.25"), "tags": ("a",)}
    store["nothing"] = None

    assert store.blocks() == ["frame", "nothing", "plain", "series", "table"]
    pd.testing.assert_frame_equal(store["frame"], frame)
    assert store["table"].equals(pa.table({"x": [1, 2, 3]}))
    pd.testing.assert_series_equal(store["series"], pd.Series([3, 4], name="n"))
    assert store["plain"] == {"day": "2024-01-02", "total": 1.25, "tags": ["a"]}
    assert store["nothing"] is None and "nothing" in store and "missing" not in store
    assert (tmp_path / "outputs" / "p" / "run-1" / "frame.parquet").is_file()
    assert not list((tmp_path / "outputs" / "p" / "run-1").glob(".*tmp"))  # no leftovers

    store["frame"] = [1, 2]  # a later value of another kind replaces the earlier file
    assert store["frame"] == [1, 2] and not (tmp_path / "outputs" / "p" / "run-1" / "frame.parquet").exists()


def test_values_that_cannot_be_stored_are_refused(tmp_path):
    store = OutputStore(tmp_path, "p", "run-1")
    with pytest.raises(MageDbtError, match="block 'obj' returned a object, which cannot be stored"):
        store["obj"] = object()
    with pytest.raises(MageDbtError, match="cannot be stored as Parquet"):
        store["mixed"] = pd.DataFrame({"x": [1, "a", 2.5]})
    assert store.blocks() == []
    with pytest.raises(OutputNotFound, match="no stored output of block 'obj'"):
        store["obj"]


def test_a_retry_reads_the_outputs_of_the_run_it_retries(tmp_path):
    OutputStore(tmp_path, "p", "first")["a"] = [1]
    retry = OutputStore(tmp_path, "p", "second", fallback_run_ids=["first"])
    assert retry["a"] == [1] and retry.find("a").run_id == "first"
    retry["a"] = [2]
    assert retry["a"] == [2] and OutputStore(tmp_path, "p", "first")["a"] == [1]


def test_runs_older_than_the_retention_are_pruned(tmp_path):
    day = 86400
    old = OutputStore(tmp_path, "p", "old")
    old.begin(execution_date="2024-01-01")
    old["a"] = 1
    kept = OutputStore(tmp_path, "q", "recent")
    kept.begin()
    kept["a"] = 2
    marker = tmp_path / "outputs" / "p" / "old" / "_run.json"
    data = json.loads(marker.read_text())
    data["created_at"] -= 15 * day
    marker.write_text(json.dumps(data))

    assert prune_runs(tmp_path, 0) == []  # 0: pruning off
    assert prune_runs(tmp_path, 14, keep={"old"}) == []  # a run being retried is kept
    retry = OutputStore(tmp_path, "p", "new")
    assert retry.begin(retention_days=14) == [tmp_path / "outputs" / "p" / "old"]
    assert [r.run_id for r in list_runs(tmp_path, "p")] == ["new"]
    assert OutputStore(tmp_path, "q", "recent")["a"] == 2
    assert prune_runs(tmp_path, 1, now=time.time() + 2 * day) != []


CHAIN = {
    "flows/chain/produce.py": """
        import pandas as pd
        from mage_dbt import data_loader


        @data_loader
        def produce(*, execution_date):
            return pd.DataFrame({"day": [execution_date.date().isoformat()] * 3, "n": [1, 2, 3]})
        """,
    "flows/chain/consume.py": """
        import os
        from mage_dbt import transformer


        @transformer
        def consume(frame):
            return {"rows": len(frame), "total": int(frame["n"].sum()), "pid": os.getpid()}
        """,
}
RETRY_SCRIPT = """
import json, sys
from mage_dbt.context import make_context
from mage_dbt.blocks.outputs import OutputStore
from mage_dbt.pipelines.pipeline import load_pipeline, restrict
from mage_dbt.runs.runner import PipelineRunner
from mage_dbt.settings import load_settings

settings = load_settings()
settings.export_environment()
pipeline = restrict(load_pipeline(settings, "chain"), {"consume"})
context = make_context("chain", "2024-03-05", run_id="retry-run")
store = OutputStore(settings.data_dir, "chain", "retry-run", fallback_run_ids=sys.argv[1:])
summary = PipelineRunner(settings, pipeline, context, outputs=store).run()
print(json.dumps({n: [r.status, r.message] for n, r in summary.results.items()}))
"""


def _retry(project, *fallbacks):
    env = {k: v for k, v in os.environ.items() if k != "MAGE_DBT_DATA_DIR"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(RETRY_SCRIPT), *fallbacks], cwd=project,
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_outputs_are_read_back_in_other_processes(demo_project):
    write_pipeline(demo_project, "chain", {"blocks": [
        {"name": "produce", "type": "python", "file": "flows/chain/produce.py"},
        {"name": "consume", "type": "python", "file": "flows/chain/consume.py", "upstream": ["produce"]},
    ]}, CHAIN)
    first = cli(demo_project, "run", "chain", "--execution-date", "2024-03-05")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run_id, data = summary(demo_project, first.stdout)
    assert set(statuses(data).values()) == {"success"}

    # `mage-dbt output`: schema, row count and first rows of the newest run, or of --run.
    shown = cli(demo_project, "output", "chain", "produce", "--rows", "2")
    assert shown.returncode == 0, shown.stderr
    assert f"run {run_id}" in shown.stdout and "pandas · 3 rows · 2 columns" in shown.stdout
    assert "day" in shown.stdout and "string" in shown.stdout and "first 2 rows" in shown.stdout
    assert "2024-03-05" in shown.stdout
    as_json = cli(demo_project, "output", "chain", "consume", "--run", run_id)
    assert as_json.returncode == 0 and '"total": 6' in as_json.stdout
    missing = cli(demo_project, "output", "chain", "nope")
    assert missing.returncode == 2 and "blocks with outputs there: consume, produce" in missing.stderr

    # Another process retries `consume` only: it reads `produce` from the original run.
    assert _retry(demo_project, run_id) == {"consume": ["success", "transformer consume: dict"]}
    retried = OutputStore(demo_project / ".mage_dbt", "chain", "retry-run")
    assert retried.blocks() == ["consume"] and retried["consume"]["total"] == 6
    assert retried["consume"]["pid"] != OutputStore(demo_project / ".mage_dbt", "chain", run_id)["consume"]["pid"]
    assert find_output(demo_project / ".mage_dbt", "chain", "consume").run_id == "retry-run"

    # Without the original run to fall back on, the block fails and says why.
    status, message = _retry(demo_project)["consume"]
    assert status == "failed" and "no stored output of block 'produce' in pipeline 'chain'" in message
