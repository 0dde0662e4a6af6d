"""PostgreSQL for tests: make sure the local server runs, and hand out throw-away databases.

Under CI=true a PostgreSQL that cannot be reached fails the test run instead of skipping.
"""

from __future__ import annotations

import contextlib
import glob
import os
import subprocess
import time

import pytest

HOST, PORT, USER = "127.0.0.1", "5432", "postgres"


def _connect(dbname: str = "postgres"):
    import psycopg2

    return psycopg2.connect(host=HOST, port=PORT, user=USER, dbname=dbname, connect_timeout=3)


def ensure_running() -> None:
    """Start the local cluster if it is down; fail under CI, skip elsewhere, if it stays down."""
    try:
        _connect().close()
        return
    except Exception:
        pass
    versions = sorted(glob.glob("/etc/postgresql/*"))
    if versions:
        version = os.path.basename(versions[-1])
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                       capture_output=True, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                _connect().close()
                return
            except Exception:
                time.sleep(0.5)  # readiness polling
    message = f"PostgreSQL is not reachable on {HOST}:{PORT}"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI=true: Postgres tests must run)", pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def temporary_database(name: str):
    """Create database `name` (dropping a leftover one), yield dbt/libpq env vars, drop it after."""
    ensure_running()
    conn = _connect()
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield {"PGHOST": HOST, "PGPORT": PORT, "PGUSER": USER, "PGPASSWORD": "", "PGDATABASE": name}
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def query(env: dict[str, str], sql: str):
    with contextlib.closing(_connect(env["PGDATABASE"])) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


DEMO_SCHEMAS = ("analytics", "analytics_raw", "analytics_snapshots", "analytics_landing")


def drop_schemas(env: dict[str, str], schemas: tuple[str, ...] = DEMO_SCHEMAS) -> None:
    """A clean warehouse for the next run: other sessions on the worker's database ended, `schemas` dropped."""
    end_other_sessions(env)
    with contextlib.closing(_connect(env["PGDATABASE"])) as conn, conn.cursor() as cur:
        conn.autocommit = True
        for schema in schemas:
            cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def end_other_sessions(env: dict[str, str]) -> None:
    """End every other session on this worker's own database: a test that killed a run mid-query
    leaves Postgres running that query (pg_sleep(90)) and holding its locks, and the next test's
    DROP SCHEMA would wait for it (seen: 60 s lost per such test)."""
    with contextlib.closing(_connect(env["PGDATABASE"])) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute("select pg_terminate_backend(pid) from pg_stat_activity "
                    "where datname = current_database() and pid <> pg_backend_pid()")
