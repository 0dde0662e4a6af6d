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
