"""Python blocks: Mage's decorators, upstream outputs in declared order, run context keywords, the
lazily connected warehouse, @test failures skipping downstream, and bad block files rejected
before anything runs."""

from __future__ import annotations

import inspect

import pyarrow as pa
import pytest

from mage_dbt.blocks.python import CONTEXT_KWARGS, analyse_python_file, check_call, keyword_names
from mage_dbt.errors import BlockError
from tests.conftest import cli
from tests.support.block_pipelines import (
    duckdb_query, one_line_error, states, statuses, summary, task_run_logs, write_pipeline,
)
from tests.support.runs import task_runs

PY_BLOCKS = {
    "flows/py/numbers.py": """
        import pandas as pd

        if 'data_loader' not in globals():
            from mage_dbt import data_loader


        @data_loader
        def numbers(*args, **kwargs):
            return pd.DataFrame({"n": [1, 2, 3], "label": ["one", "two", "three"]})
        """,
    "flows/py/words.py": """
        import pyarrow as pa
        from mage_dbt import data_loader


        @data_loader
        def words():
            return pa.table({"word": ["alpha", "beta"]})
        """,
    "flows/py/combine.py": """
        from mage_dbt import transformer, test


        @transformer
        def combine(words, numbers, *, execution_date, interval_end, vars, full_refresh, logger):
            logger.info("combining %d words", words.num_rows)
            return {
                "words": type(words).__name__, "word_rows": words.num_rows,
                "numbers": type(numbers).__name__, "total": int(numbers["n"].sum()),
                "execution_date": execution_date.isoformat(), "interval_end": interval_end.isoformat(),
                "vars": vars, "full_refresh": full_refresh,
            }


        @test
        def test_total(output):
            assert output["total"] == 6
        """,
    "flows/py/ready.py": """
        if 'sensor' not in globals():
            from mage_dbt import sensor


        @sensor
        def ready(**kwargs) -> bool:
            return True
        """,
    "flows/py/store.py": """
        import pandas as pd

        if 'data_exporter' not in globals():
            from mage_dbt import data_exporter


        @data_exporter
        def store(combined, ready, warehouse):
            frame = pd.DataFrame({"total": [combined["total"]], "ready": [ready]})
            warehouse.write(frame, "combined", schema="py", mode="replace")
            return int(warehouse.read_sql("select count(*) as n from py.combined")["n"][0])
        """,
}

PY_PIPELINE = {
    "description": "python blocks only",
    "blocks": [
        {"name": "numbers", "type": "python", "file": "flows/py/numbers.py"},
        {"name": "words", "type": "python", "file": "flows/py/words.py"},
        {"name": "combine", "type": "python", "file": "flows/py/combine.py", "upstream": ["words", "numbers"]},
        {"name": "ready", "type": "python", "file": "flows/py/ready.py", "timeout": 0},
        {"name": "store", "type": "python", "file": "flows/py/store.py", "upstream": ["combine", "ready"],
         "writes": ["py.combined"]},
    ],
}


def test_blocks_get_upstream_outputs_in_declared_order_and_the_run_context(demo_project):
    write_pipeline(demo_project, "py", PY_PIPELINE, PY_BLOCKS)
    result = cli(demo_project, "run", "py", "--execution-date", "2024-03-05", "--var", "region=eu")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_id, data = summary(demo_project, result.stdout)
    assert statuses(data) == dict.fromkeys(["numbers", "words", "combine", "ready", "store"], "success")

    from mage_dbt.blocks.outputs import OutputStore

    store = OutputStore(demo_project / ".mage_dbt", "py", run_id)
    assert store.blocks() == ["combine", "numbers", "ready", "store", "words"]
    assert isinstance(store["words"], pa.Table) and store["numbers"]["n"].tolist() == [1, 2, 3]
    assert store["combine"] == {
        "words": "Table", "word_rows": 2, "numbers": "DataFrame", "total": 6,
        "execution_date": "2024-03-05T00:00:00+00:00", "interval_end": "2024-03-06T00:00:00+00:00",
        "vars": {"region": "eu"}, "full_refresh": False,
    }
    assert store["ready"] is True and store["store"] == 1
    assert duckdb_query(demo_project, "select total, ready from py.combined") == [(6, True)]

    runs = task_runs(run_id)
    assert set(states(runs).values()) == {("COMPLETED", "Completed")} and len(runs) == 5
    assert any("combining 2 words" in m for m in task_run_logs(runs["combine"].id))


FAILING_TEST_BLOCKS = {
    "flows/pyfail/load.py": """
        if 'data_loader' not in globals():
            from mage_dbt import data_loader, test


        @data_loader
        def load():
            return {"amount": -5}


        @test
        def test_amount_positive(output, **kwargs):
            assert output["amount"] > 0, f"amount must be positive, got {output['amount']}"
        """,
    "flows/pyfail/after.py": """
        from mage_dbt import transformer


        @transformer
        def after(loaded):
            return loaded
        """,
    "flows/pyfail/other.py": """
        from mage_dbt import data_loader


        @data_loader
        def other():
            return [1, 2]
        """,
}


def test_a_failing_test_fails_the_block_and_skips_its_downstream(demo_project):
    write_pipeline(demo_project, "pyfail", {"blocks": [
        {"name": "load", "type": "python", "file": "flows/pyfail/load.py"},
        {"name": "after", "type": "python", "file": "flows/pyfail/after.py", "upstream": ["load"]},
        {"name": "other", "type": "python", "file": "flows/pyfail/other.py"},
    ]}, FAILING_TEST_BLOCKS)
    result = cli(demo_project, "run", "pyfail", "--execution-date", "2024-03-05")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    run_id, data = summary(demo_project, result.stdout)
    assert statuses(data) == {"load": "failed", "after": "skipped", "other": "success"}
    message = data["results"]["load"]["message"]
    assert "@test test_amount_positive failed: amount must be positive, got -5" in message
    assert "block 'load' (flows/pyfail/load.py)" in message
    assert data["results"]["after"]["message"] == "upstream block 'load' did not succeed"

    got = states(task_runs(run_id))
    assert got["load"][0] == "FAILED" and got["after"] == ("CANCELLED", "Skipped")
    assert got["other"] == ("COMPLETED", "Completed")

    from mage_dbt.blocks.outputs import OutputStore

    assert OutputStore(demo_project / ".mage_dbt", "pyfail", run_id).blocks() == ["other"]


BAD_FILES = {
    "no_function": ("""
        def load():
            return 1
        """, "no function decorated with @data_loader"),
    "two_functions": ("""
        from mage_dbt import data_loader, transformer


        @data_loader
        def load():
            return 1


        @transformer
        def again(data):
            return data
        """, "2 decorated block functions: @data_loader load (line 5), @transformer again (line 10)"),
    "bad_signature": ("""
        from mage_dbt import transformer


        @transformer
        def combine(only_one, *, execution_date):
            return only_one
        """, "cannot accept its 2 upstream block input(s) (first, second): too many positional arguments"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_block_files_fail_before_the_run_with_block_and_file(demo_project, case):
    text, expected = BAD_FILES[case]
    ok = "from mage_dbt import data_loader\n\n@data_loader\ndef load():\n    return 1\n"
    write_pipeline(demo_project, "bad", {"blocks": [
        {"name": "first", "type": "python", "file": "flows/bad/ok.py"},
        {"name": "second", "type": "python", "file": "flows/bad/ok.py"},
        {"name": "broken", "type": "python", "file": f"flows/bad/{case}.py", "upstream": ["first", "second"]},
    ]}, {f"flows/bad/{case}.py": text, "flows/bad/ok.py": ok})
    result = cli(demo_project, "run", "bad", "--execution-date", "2024-03-05")
    line = one_line_error(result)
    assert f"block 'broken' (flows/bad/{case}.py" in line
    assert expected in line
    assert not (demo_project / ".mage_dbt" / "outputs" / "bad").exists()


def test_a_dataframe_clashing_with_the_table_fails_the_block_and_leaves_the_table(demo_project):
    write_pipeline(demo_project, "clash", {"blocks": [
        {"name": "create", "type": "python", "file": "flows/clash/create.py"},
        {"name": "clash", "type": "python", "file": "flows/clash/clash.py", "upstream": ["create"]},
    ]}, {
        "flows/clash/create.py": """
            import pandas as pd
            from mage_dbt import data_exporter


            @data_exporter
            def create(warehouse):
                frame = pd.DataFrame({"id": [1, 2], "name": ["a", "b"]})
                return warehouse.write(frame, "clash.items", mode="replace")
            """,
        "flows/clash/clash.py": """
            import pandas as pd
            from mage_dbt import data_exporter


            @data_exporter
            def clash(created, warehouse):
                frame = pd.DataFrame({"id": [3], "amount": [1.5]})
                warehouse.write(frame, "clash.items", mode="append")
            """,
    })
    result = cli(demo_project, "run", "clash", "--execution-date", "2024-03-05")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    _, data = summary(demo_project, result.stdout)
    assert statuses(data) == {"create": "success", "clash": "failed"}
    message = data["results"]["clash"]["message"]
    assert "cannot write to clash.items: columns clash with the existing table" in message
    assert "missing from the DataFrame: name" in message and "not in the table: amount" in message
    assert duckdb_query(demo_project, "select id, name from clash.items order by id") == [(1, "a"), (2, "b")]


# -- signature rules, without running anything ------------------------------------------------------

def _sig(text: str) -> inspect.Signature:
    namespace: dict = {}
    exec(f"def f{text}: pass", namespace)
    return inspect.signature(namespace["f"])


@pytest.mark.parametrize("signature, inputs, keywords", [
    ("(a, b)", ["x", "y"], []),
    ("(*args, **kwargs)", ["x", "y"], list(CONTEXT_KWARGS)),
    ("(df, execution_date)", ["x"], ["execution_date"]),
    ("(df, *, warehouse, vars=None)", ["x"], ["vars", "warehouse"]),
    ("(df, extra=1, **kw)", ["x"], list(CONTEXT_KWARGS)),
])
def test_accepted_signatures_get_only_the_keywords_they_name(signature, inputs, keywords):
    assert sorted(check_call(_sig(signature), "f", inputs, "block 'b'")) == sorted(keywords)


@pytest.mark.parametrize("signature, inputs, reason", [
    ("(a)", ["x", "y"], "too many positional arguments"),
    ("(a, b)", ["x"], "missing a required argument: 'b'"),
    ("(a, *, token)", ["x"], "missing a required argument: 'token'"),
    ("(execution_date)", ["x"], "parameter 'execution_date' of f() would receive the upstream block 'x'"),
])
def test_signatures_that_cannot_take_the_upstream_outputs_are_rejected(signature, inputs, reason):
    with pytest.raises(BlockError) as info:
        check_call(_sig(signature), "f", inputs, "block 'b' (flows/p/b.py:3)")
    assert reason in str(info.value) and "block 'b' (flows/p/b.py:3)" in str(info.value)


def test_the_static_check_reads_decorators_without_executing_the_file(tmp_path):
    path = tmp_path / "block.py"
    path.write_text("raise SystemExit('never executed')\n"
                    "if 'transformer' not in globals():\n    from mage_dbt import transformer\n"
                    "import mage_dbt\n\n@mage_dbt.transformer\ndef t(df, **kwargs):\n    return df\n\n"
                    "@test\ndef test_one(output):\n    pass\n")
    info = analyse_python_file(path, lambda line: f"block 'b':{line}")
    assert (info.main.name, info.main.kind, info.main.line) == ("t", "transformer", 7)
    assert [t.name for t in info.tests] == ["test_one"]
    assert keyword_names(info.main.signature, 1) == list(CONTEXT_KWARGS)
    path.write_text("def broken(:\n")
    with pytest.raises(BlockError, match=r"block 'b':1: Python syntax error"):
        analyse_python_file(path, lambda line: f"block 'b':{line}")


def test_the_decorators_are_importable_from_the_package():
    import mage_dbt
    from mage_dbt import data_exporter, data_loader, sensor, transformer

    for decorator in (data_loader, transformer, data_exporter, sensor, mage_dbt.test):
        func = decorator(lambda: None)
        assert func.__mage_dbt_kind__ == decorator.__name__
