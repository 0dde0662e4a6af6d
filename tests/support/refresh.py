"""Helpers for the full-refresh, drift, rebuild and safety tests: a test pipeline in the demo copy,
DuckDB/Postgres targets, model edits, relation identities and marker rows."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from tests.conftest import cli
from tests.support import postgres
from tests.support.runs import checksum, duckdb_rows

INCREMENTAL = ("customer_ltv_daily", "fct_daily_revenue", "fct_orders")
# The dbt part of the demo the tests use: everything but the landing model, which needs a Python
# block of flows/demo.yaml to load its source first.
PIPELINE_YAML = """\
description: full-refresh tests - the demo dbt project without its landing model
dbt:
  project: demo
  select: ["*"]
  exclude: ["source:landing+"]
  command: build
on_drift: {on_drift}
"""
COMMAND = re.compile(r"`(mage-dbt full-refresh [^`]+)`")


@dataclass
class Backend:
    """One warehouse the tests run on: its name, CLI flags, env and a query function."""

    name: str
    project: Path
    env: dict[str, str]
    flags: list[str]
    schema: str

    def query(self, sql: str) -> list[tuple]:
        sql = sql.format(schema=self.schema)
        if self.name == "duckdb":
            return duckdb_rows(self.project, sql)
        return postgres.query(self.env, sql)

    def execute(self, sql: str) -> None:
        """Run a write statement (DuckDB: only while no dbt process holds the file)."""
        sql = sql.format(schema=self.schema)
        if self.name == "duckdb":
            import duckdb

            with duckdb.connect(str(self.project / ".mage_dbt" / "demo.duckdb")) as conn:
                conn.execute(sql)
            return
        with psycopg2.connect(host=self.env["PGHOST"], user=self.env["PGUSER"], dbname=self.env["PGDATABASE"]) as conn:
            with conn.cursor() as cur:
                cur.execute(sql)

    def cli(self, *args: str):
        return cli(self.project, *args, *self.flags, env=self.env)

    def table_checksum(self, table: str) -> str:
        return checksum(self.query(f"select * from {{schema}}.{table}"))

    def identity(self, table: str):
        """Postgres: the relation's oid (a rebuilt table gets a new one). DuckDB: its row checksum."""
        if self.name == "pg":
            return self.query(f"select '{{schema}}.{table}'::regclass::oid")[0][0]
        return self.table_checksum(table)

    def columns(self, table: str) -> list[str]:
        rows = self.query(
            "select column_name from information_schema.columns where table_schema = '{schema}' "
            f"and table_name = '{table}' order by ordinal_position"
        )
        return [r[0] for r in rows]


def make_backend(name: str, project: Path, pg_env: dict | None) -> Backend:
    if name == "duckdb":
        return Backend("duckdb", project, {}, [], "main")
    assert pg_env is not None
    reset_pg(pg_env)
    return Backend("pg", project, pg_env, ["--target", "pg"], "analytics")


def reset_pg(env: dict[str, str]) -> None:
    postgres.drop_schemas(env)


def write_pipeline(project: Path, name: str = "daily", on_drift: str = "fail") -> str:
    (project / "flows" / f"{name}.yaml").write_text(PIPELINE_YAML.format(on_drift=on_drift))
    return name


def edit_model(project: Path, model: str, old: str, new: str) -> None:
    """Replace `old` by `new` in the demo copy's model file (exactly once)."""
    path = project / "dbt_projects" / "demo" / "models" / "marts" / f"{model}.sql"
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {path}"
    path.write_text(text.replace(old, new))


# customer_ltv_daily gains a column that is never null and checkable: lifetime revenue in cents.
LTV_LAST_COLUMN = "    max(o.order_date) as last_order_date\n"
LTV_NEW_COLUMN = (
    "    max(o.order_date) as last_order_date,\n"
    "    cast(coalesce(sum(p.amount), 0) * 100 as bigint) as lifetime_revenue_cents\n"
)


def add_ltv_column(project: Path) -> None:
    edit_model(project, "customer_ltv_daily", LTV_LAST_COLUMN, LTV_NEW_COLUMN)


def ok(result, code: int = 0) -> None:
    assert result.returncode == code, (
        f"exit {result.returncode} != {code}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    )


def error_line(result) -> str:
    """The CLI's one-line error: asserts stderr is exactly one `error:` line (no traceback)."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-4000:]
    return lines[0]


def fix_command(result) -> list[str]:
    """The `mage-dbt full-refresh ...` command a drift error names, as arguments after `mage-dbt`."""
    match = COMMAND.search(result.stderr)
    assert match, result.stderr
    return match.group(1).split()[1:]


def rows_by(backend: Backend, table: str, columns: str, order: str) -> list[tuple]:
    return backend.query(f"select {columns} from {{schema}}.{table} order by {order}")

