"""SQL blocks: jinja2 templates with ref()/source() resolved from the manifest, sqlglot parsing before
the run (errors with block, file, line and column), transpiling between dialects (BigQuery checked
through sqlglot's generator only), queries returning DataFrames and relations materialized in one
transaction on DuckDB and Postgres."""

from __future__ import annotations

import pytest

from mage_dbt.blocks.sql import TargetInfo, compile_sql, materialize_statements
from mage_dbt.blocks.support import Relations
from mage_dbt.dbt.nodes import DbtNode
from mage_dbt.errors import BlockError
from mage_dbt.pipelines.spec import BlockSpec
from tests.conftest import cli
from tests.support import postgres
from tests.support.block_pipelines import duckdb_query, one_line_error, statuses, summary, write_pipeline

NODES = {
    "model.demo.fct_orders": DbtNode(
        unique_id="model.demo.fct_orders", name="fct_orders", resource_type="model", package_name="demo",
        original_file_path="models/marts/fct_orders.sql", fqn=("demo", "marts", "fct_orders"), depends_on=(),
        database="shop", schema="analytics", alias="fct_orders", relation_name='"shop"."analytics"."fct_orders"'),
    "source.demo.landing.orders": DbtNode(
        unique_id="source.demo.landing.orders", name="orders", resource_type="source", package_name="demo",
        original_file_path="models/landing/_landing.yml", fqn=("demo", "landing", "landing", "orders"),
        depends_on=(), database="shop", schema="analytics_landing", alias="orders",
        relation_name='"shop"."analytics_landing"."orders"'),
}
VALUES = {"execution_date": "2024-02-01", "vars": {"region": "eu"}, "full_refresh": False}
POSTGRES_SQL = """\
-- orders of the day
select o.order_id, o.status::text as status, l.order_id is not null as landed
from {{ ref('fct_orders') }} as o
left join {{ source('landing', 'orders') }} as l using (order_id)
where o.order_date = '{{ execution_date }}'::date and '{{ vars.region }}' = 'eu'
"""


def _compile(text, *, target="duckdb", preflight=False, **options):
    spec = BlockSpec(name="daily", type="sql", **options)
    info = TargetInfo(dialect=target, schema="analytics", database="shop")
    return compile_sql(text, spec=spec, label="block 'daily' (flows/p/daily.sql)", target=info,
                       values=VALUES, relations=Relations(NODES, "demo"), preflight=preflight)


def test_ref_and_source_render_the_manifest_relations_and_the_sql_is_transpiled():
    compiled = _compile(POSTGRES_SQL, dialect="postgres")
    assert '"shop"."analytics"."fct_orders"' in compiled.rendered
    assert '"shop"."analytics_landing"."orders"' in compiled.rendered
    assert set(compiled.used) == {"model.demo.fct_orders", "source.demo.landing.orders"}
    assert compiled.reads() == {("analytics", "fct_orders"), ("analytics_landing", "orders")}
    assert "CAST('2024-02-01' AS DATE)" in compiled.sql and "::" not in compiled.sql  # DuckDB text
    assert "'eu' = 'eu'" in compiled.sql

    bigquery = _compile(POSTGRES_SQL, target="bigquery", dialect="postgres").sql
    assert "`shop`.`analytics`.`fct_orders`" in bigquery
    assert "CAST(o.status AS STRING)" in bigquery and "CAST('2024-02-01' AS DATE)" in bigquery

    same = _compile(POSTGRES_SQL, target="postgres", dialect="postgres")
    assert same.sql == same.rendered.strip()  # SQL in the target's own dialect runs as written


def test_materialized_relations_are_created_per_dialect():
    table = _compile("select 1 as n", materialize="table", table="daily_n", schema="reports")
    assert table.writes() == {("reports", "daily_n")}
    assert materialize_statements(table, existing=None) == [
        'CREATE SCHEMA IF NOT EXISTS "shop"."reports"',
        'CREATE TABLE "shop"."reports"."daily_n" AS (\nselect 1 as n\n)',
    ]
    assert materialize_statements(table, existing="view")[1] == 'DROP VIEW "shop"."reports"."daily_n"'
    pg = _compile("select 1 as n", target="postgres", materialize="view")
    assert materialize_statements(pg, existing="table") == [
        'CREATE SCHEMA IF NOT EXISTS "analytics"',
        'DROP TABLE "shop"."analytics"."daily"',
        'CREATE VIEW "shop"."analytics"."daily" AS (\nselect 1 as n\n)',
    ]
    bq = _compile("select 1::int as n", target="bigquery", dialect="postgres", materialize="table")
    assert materialize_statements(bq, existing="table") == [
        "CREATE SCHEMA IF NOT EXISTS `shop`.`analytics`",
        "CREATE OR REPLACE TABLE `shop`.`analytics`.`daily` AS (\nSELECT CAST(1 AS INT64) AS n\n)",
    ]


@pytest.mark.parametrize("text, message", [
    ("select a,\n  b\nfrom t\nwhere (a = 1", "SQL syntax error at line 4, column 12: Expecting )"),
    ("select 1;\nselect 2", "a SQL block holds exactly one query, found 2 statements"),
    ("delete from t", "not a DELETE statement"),
    ("select 1\nfrom {{ ref('fct_order') }}", "daily.sql):2: ref('fct_order') names no model, seed or snapshot"),
    ("select * from {{ source('landing', 'order') }}", "source('landing', 'order') is not a source"),
    ("select {{ nope }}", "daily.sql):1: template error: 'nope' is undefined"),
    ("select {{ x }", "daily.sql):1: template syntax error"),
])
def test_bad_sql_names_the_block_file_and_line(text, message):
    with pytest.raises(BlockError) as info:
        _compile(text)
    assert message in str(info.value) and "block 'daily' (flows/p/daily.sql" in str(info.value)


def test_ref_suggests_close_names_and_preflight_tolerates_vars_given_later():
    with pytest.raises(BlockError, match="did you mean fct_orders"):
        _compile("select * from {{ ref('fct_order') }}")
    compiled = _compile("select * from t where region = '{{ vars.country }}' limit {{ var('n') }}", preflight=True)
    assert "'NULL'" in compiled.rendered and "limit NULL" in compiled.rendered
    with pytest.raises(BlockError, match="'dict object' has no attribute 'country'"):
        _compile("select '{{ vars.country }}'")


SQL_FILES = {
    "flows/sq/land.py": """
        import pandas as pd
        from mage_dbt import data_exporter


        @data_exporter
        def land(warehouse):
            frame = pd.DataFrame({"id": [1, 2, 3], "status": ["new", "new", "paid"], "amount": [5.0, 7.5, 10.0]})
            return warehouse.write(frame, "sq.orders", mode="replace")
        """,
    "flows/sq/totals.sql": """
        -- Postgres dialect on purpose: runs on DuckDB through sqlglot
        select status, count(*)::int as orders, sum(amount)::float as amount
        from sq.orders
        group by status
        order by status
        """,
    "flows/sq/big_orders.sql": """
        select id, amount from sq.orders
        {% if vars.get('break') %}where no_such_column > 0{% else %}where amount > {{ vars.min_amount }}{% endif %}
        """,
    "flows/sq/paid.sql": """
        select id from sq.orders where status = 'paid'
        """,
    "flows/sq/use.py": """
        from mage_dbt import transformer


        @transformer
        def use(totals, big_orders, paid, *, warehouse):
            rows = warehouse.read_sql(f"select count(*) as n from {big_orders}")["n"][0]
            view = warehouse.read_sql(f"select count(*) as n from {paid}")["n"][0]
            return {"statuses": totals["status"].tolist(), "big": int(rows), "paid": int(view),
                    "relation": big_orders}
        """,
}
SQL_PIPELINE = {"vars": {"min_amount": 6}, "blocks": [
    {"name": "land", "type": "python", "file": "flows/sq/land.py", "writes": ["sq.orders"]},
    {"name": "totals", "type": "sql", "file": "flows/sq/totals.sql", "dialect": "postgres"},
    {"name": "big_orders", "type": "sql", "file": "flows/sq/big_orders.sql", "materialize": "table", "schema": "sq"},
    {"name": "paid", "type": "sql", "file": "flows/sq/paid.sql", "materialize": "view", "schema": "sq",
     "table": "paid_orders"},
    {"name": "use", "type": "python", "file": "flows/sq/use.py", "upstream": ["totals", "big_orders", "paid"]},
]}


@pytest.fixture(params=["duckdb", "pg"])
def target(request, demo_project):
    if request.param == "duckdb":
        return {}, [], lambda sql: duckdb_query(demo_project, sql)
    env = request.getfixturevalue("pg_env")
    with postgres._connect(env["PGDATABASE"]) as conn:
        conn.autocommit = True
        conn.cursor().execute("drop schema if exists sq cascade")
    return env, ["--target", "pg"], lambda sql: postgres.query(env, sql)


def test_sql_blocks_return_frames_and_materialize_tables_and_views(demo_project, target):
    env, flags, query = target
    write_pipeline(demo_project, "sq", SQL_PIPELINE, SQL_FILES)
    result = cli(demo_project, "run", "sq", "--execution-date", "2024-03-05", *flags, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_id, data = summary(demo_project, result.stdout)
    assert set(statuses(data).values()) == {"success"}
    assert data["results"]["totals"]["rows"] == 2 and data["results"]["big_orders"]["rows"] == 2

    from mage_dbt.blocks.outputs import OutputStore

    outputs = OutputStore(demo_project / ".mage_dbt", "sq", run_id)
    assert outputs["totals"].to_dict("list") == {"status": ["new", "paid"], "orders": [2, 1], "amount": [12.5, 10.0]}
    used = outputs["use"]
    assert used["statuses"] == ["new", "paid"] and used["big"] == 2 and used["paid"] == 1
    assert used["relation"].endswith('"sq"."big_orders"')
    assert sorted(query("select id from sq.big_orders")) == [(2,), (3,)]

    # A failing query leaves the relation it would have replaced as it was (one transaction).
    again = cli(demo_project, "run", "sq", "--execution-date", "2024-03-05", "--var", "break=1",
                "--var", "min_amount=0", *flags, env=env)
    assert again.returncode == 1, again.stdout[-3000:]
    _, data = summary(demo_project, again.stdout)
    assert statuses(data)["big_orders"] == "failed" and statuses(data)["use"] == "skipped"
    assert "creating" in data["results"]["big_orders"]["message"] and "(rolled back)" in data["results"]["big_orders"]["message"]
    assert sorted(query("select id from sq.big_orders")) == [(2,), (3,)]


def test_sql_that_does_not_parse_fails_before_the_run(demo_project):
    write_pipeline(demo_project, "sqbad", {"blocks": [
        {"name": "broken", "type": "sql", "file": "flows/sqbad/broken.sql"},
    ]}, {"flows/sqbad/broken.sql": "select id,\n       amount\nfrom sq.orders\nwhere (amount > 1\n"})
    line = one_line_error(cli(demo_project, "run", "sqbad", "--execution-date", "2024-03-05"))
    assert "block 'broken' (flows/sqbad/broken.sql): SQL syntax error at line 4, column" in line


def test_ref_to_a_missing_model_fails_before_the_run(demo_project):
    write_pipeline(demo_project, "sqref", {"dbt": {"select": ["stg_orders"]}, "blocks": [
        {"name": "orders", "type": "sql", "file": "flows/sqref/orders.sql"},
    ]}, {"flows/sqref/orders.sql": "select *\nfrom {{ ref('stg_order') }}\n"})
    line = one_line_error(cli(demo_project, "run", "sqref", "--execution-date", "2024-03-05"))
    assert "block 'orders' (flows/sqref/orders.sql):2: ref('stg_order') names no model" in line
    assert "did you mean stg_orders" in line
