"""The catalog of a dbt target: column lookups, and the table renames/drops a snapshot rebuild needs.

Used by drift detection (`mage_dbt.refresh.drift`: a relation's columns, and the columns a compiled
query would produce, asked of the warehouse without running it) and by a full refresh that
rebuilds snapshots (`mage_dbt.refresh.full_refresh`: set the old table aside, put it back if the
rebuild fails). DuckDB and Postgres only. The connection comes from the dbt profile of the
project's target, opened for one block at a time (DuckDB takes one writer per file).
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

import yaml

from mage_dbt.errors import ConfigError
from mage_dbt.warehouse.connections import connect_raw
from mage_dbt.warehouse.profile import resolve_target

if TYPE_CHECKING:
    from mage_dbt.dbt.manifest import DbtProjectRef

SUPPORTED = ("duckdb", "postgres")

Columns = dict[str, str]  # column name -> type as the warehouse spells it, in table order


class UnsupportedWarehouse(ConfigError):
    """Drift detection has no column probe for this target type."""


def _quote(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


class ProbeError(Exception):
    """The warehouse rejected a compiled query (it would fail the run the same way)."""


class Catalog:
    """Column lookups on the dbt target, and the table renames/drops a snapshot rebuild needs."""

    def __init__(self, kind: str, connection: Any) -> None:
        self.kind = kind
        self.connection = connection

    @classmethod
    @contextmanager
    def open(cls, ref: "DbtProjectRef") -> Iterator["Catalog"]:
        """Connect to `ref`'s target (from profiles.yml) for the duration of the block only.

        DuckDB takes one writer per file, so never hold this open while dbt runs.
        """
        target = target_config(ref)
        if target.type not in SUPPORTED:
            raise UnsupportedWarehouse(
                f"drift detection supports {', '.join(SUPPORTED)} targets; target "
                f"'{target.target_name}' is {target.type}",
                hint="set on_drift: warn in the pipeline file to run without the check",
            )
        connection = connect_raw(target)
        try:
            yield cls(target.type, connection)
        finally:
            connection.close()

    def relation_columns(self, database: str | None, schema: str | None, name: str | None) -> Columns | None:
        """The relation's columns in table order, or None when it does not exist."""
        if self.kind == "duckdb":
            rows = self.connection.execute(
                "select column_name, data_type from information_schema.columns where table_catalog = ? "
                "and table_schema = ? and table_name = ? order by ordinal_position",
                [database, schema, name],
            ).fetchall()
        else:
            with self.connection.cursor() as cur:
                cur.execute(
                    "select a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a "
                    "join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace "
                    "where n.nspname = %s and c.relname = %s and a.attnum > 0 and not a.attisdropped "
                    "order by a.attnum",
                    [schema, name],
                )
                rows = cur.fetchall()
        return {str(n): str(t) for n, t in rows} if rows else None

    def query_columns(self, sql: str) -> Columns:
        """The columns `sql` would produce, asked of the warehouse without running the query."""
        try:
            if self.kind == "duckdb":
                relation = self.connection.sql(sql)
                return {str(n): str(t) for n, t in zip(relation.columns, relation.types)}
            return self._postgres_query_columns(sql)
        except Exception as exc:  # the driver's own error types; the message is what matters
            raise ProbeError(" ".join(str(exc).split())[:300]) from None

    def _postgres_query_columns(self, sql: str) -> Columns:
        view = f"mage_dbt_probe_{uuid.uuid4().hex[:12]}"
        with self.connection.cursor() as cur:
            cur.execute("begin")
            try:
                cur.execute(f"create temporary view {view} as\n{sql}\n")
                cur.execute(
                    "select attname, format_type(atttypid, atttypmod) from pg_attribute "
                    "where attrelid = %s::regclass and attnum > 0 and not attisdropped order by attnum",
                    [f"pg_temp.{view}"],
                )
                rows = cur.fetchall()
            finally:
                cur.execute("rollback")
        return {str(n): str(t) for n, t in rows}

    def _table(self, database: str | None, schema: str | None, name: str) -> str:
        parts = ([database] if self.kind == "duckdb" and database else []) + [schema, name]
        return ".".join(_quote(p) for p in parts if p)

    def rename_table(self, database: str | None, schema: str | None, old: str, new: str) -> None:
        self._execute(f"alter table {self._table(database, schema, old)} rename to {_quote(new)}")

    def drop_table(self, database: str | None, schema: str | None, name: str) -> None:
        self._execute(f"drop table if exists {self._table(database, schema, name)}")

    def _execute(self, statement: str) -> None:
        if self.kind == "duckdb":
            self.connection.execute(statement)
            return
        with self.connection.cursor() as cur:
            cur.execute(statement)


def target_config(ref: "DbtProjectRef"):
    """The dbt target `ref` runs on, rendered from profiles.yml (the one source of connection settings)."""
    project = yaml.safe_load((ref.project_dir / "dbt_project.yml").read_text()) or {}
    return resolve_target(ref.profiles_dir, str(project.get("profile")), ref.target)


def check_target_opens(ref: "DbtProjectRef") -> None:
    """Before a run exists: `ref`'s DuckDB file opens for writing now (ConfigError naming the file, the
    cause and the fix: another process holds it, its folder is read-only, ...).

    DuckDB takes one writer per file, so a second run on the same file would otherwise fail inside its
    flow run. Other targets are not probed (a connection costs a round trip; dbt reports them); a file
    whose folder does not exist yet is left to dbt, which creates it."""
    import os

    target = target_config(ref)
    path = str(target.get("path", ":memory:"))
    remote = path.startswith((":memory:", "md:", "motherduck:")) or "://" in path  # no local file to hold
    if target.type != "duckdb" or remote or not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        return
    connect_raw(target).close()
