"""A full refresh of models that filter on the run date needs the date: without -d it would rebuild
them for today (outside the data) and leave them empty. Models that do not read the dates still
refresh without one. Which models read the dates comes from the manifest (model and macro SQL)."""

from __future__ import annotations

from types import SimpleNamespace

from tests.support import refresh as r
from tests.support.runs import duckdb_rows, flow_run_id, task_runs

from mage_dbt.refresh.date_reads import reads_run_dates

PLAIN = "{{ config(materialized='incremental', unique_key='id') }}\nselect 1 as id\n"
# Reads the date only through a macro that calls the demo's execution_date() macro.
VIA_MACRO = "{{ config(materialized='incremental', unique_key='day') }}\nselect {{ the_day() }} as day\n"
MACRO = "{% macro the_day() -%}\n  {{ execution_date() }}\n{%- endmacro %}\n"


def _manifest(nodes: dict, macros: dict):
    def macro(sql, deps=()):
        return SimpleNamespace(macro_sql=sql, depends_on=SimpleNamespace(macros=list(deps)))

    return SimpleNamespace(
        nodes={uid: SimpleNamespace(raw_code=code, depends_on=SimpleNamespace(macros=list(deps)))
               for uid, (code, deps) in nodes.items()},
        macros={mid: macro(sql, deps) for mid, (sql, deps) in macros.items()},
    )


def test_reads_run_dates_follows_model_sql_and_macros_transitively():
    manifest = _manifest(
        nodes={
            "direct": ("select * from t where d = '{{ var(\"interval_start\") }}'", ()),
            "indirect": ("select {{ outer() }}", ("m.outer",)),
            "other_var": ("select '{{ var('region') }}' as r, 'execution_date' as label", ("m.plain",)),
            "cycle": ("select {{ a() }}", ("m.a",)),
        },
        macros={
            "m.outer": ("{% macro outer() %}{{ inner() }}{% endmacro %}", ("m.inner",)),
            "m.inner": ("{% macro inner() %}{{ var( 'execution_date' ) }}{% endmacro %}", ()),
            "m.plain": ("{% macro plain() %}1{% endmacro %}", ()),
            "m.a": ("{% macro a() %}{{ b() }}{% endmacro %}", ("m.b",)),
            "m.b": ("{% macro b() %}{{ a() }}{% endmacro %}", ("m.a",)),
        },
    )
    assert reads_run_dates(manifest, "direct")
    assert reads_run_dates(manifest, "indirect")
    assert not reads_run_dates(manifest, "other_var")  # the word alone, or another var, is not a read
    assert not reads_run_dates(manifest, "cycle")
    assert not reads_run_dates(manifest, "missing")


def _add_models(project):
    demo = project / "dbt_projects" / "demo"
    (demo / "models" / "marts" / "inc_plain.sql").write_text(PLAIN)
    (demo / "models" / "marts" / "inc_via_macro.sql").write_text(VIA_MACRO)
    (demo / "macros" / "the_day.sql").write_text(MACRO)


def test_full_refresh_without_a_date_is_refused_for_date_filtered_models(demo_project):
    _add_models(demo_project)
    backend = r.make_backend("duckdb", demo_project, None)
    pipeline = r.write_pipeline(demo_project)

    refused = backend.cli("full-refresh", pipeline, "--select", "fct_orders", "--select", "inc_via_macro")
    r.ok(refused, 2)
    line = r.error_line(refused)
    assert "full refresh of fct_orders, inc_via_macro needs a date" in line, line
    assert "-d 2024-02-01" in line and f"mage-dbt rebuild {pipeline} --select fct_orders inc_via_macro" in line, line
    assert not (demo_project / ".mage_dbt" / "runs").exists()  # refused before any flow run
    assert refused.stdout == ""

    # The README's own example, on the demo pipeline: refused the same way.
    demo = backend.cli("full-refresh", "demo", "--select", "fct_orders")
    r.ok(demo, 2)
    assert "fct_orders needs a date" in r.error_line(demo)


def test_full_refresh_with_a_date_or_of_dateless_models_runs(demo_project):
    _add_models(demo_project)
    backend = r.make_backend("duckdb", demo_project, None)
    pipeline = r.write_pipeline(demo_project)

    plain = backend.cli("full-refresh", pipeline, "--select", "inc_plain")  # reads no date: no -d needed
    r.ok(plain)
    assert set(task_runs(flow_run_id(plain.stdout))) == {"inc_plain"}
    assert duckdb_rows(demo_project, "select count(*) from main.inc_plain") == [(1,)]

    dated = backend.cli("full-refresh", pipeline, "--select", "inc_via_macro", "-d", "2024-02-01")
    r.ok(dated)
    assert duckdb_rows(demo_project, "select cast(day as varchar) from main.inc_via_macro") == [("2024-02-01",)]
