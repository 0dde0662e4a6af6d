"""Raw driver connections to a dbt target (DuckDB, Postgres), with one-line connection errors.

The adapters (duckdb.py, postgres.py) build on these, and so does the drift check, which only
needs a connection: this module imports no pandas or pyarrow, so a dbt-only run never pays for
them. Errors name the target and the profiles file and never contain a secret.
"""

from __future__ import annotations

import re
from typing import Any

from mage_dbt.errors import ConfigError
from mage_dbt.warehouse.profile import TargetConfig, first_line, scrub

_SETTING = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def connect_raw(target: TargetConfig) -> Any:
    """An open DB-API connection to `target` (DuckDB or Postgres); the caller closes it."""
    if target.type == "duckdb":
        return duckdb_connection(target)
    if target.type == "postgres":
        return postgres_connection(target)
    raise ConfigError(f"target {target.target_name!r} has type {target.type!r}: no raw connection "
                      f"for it (supported: duckdb, postgres)")


def duckdb_connection(target: TargetConfig) -> Any:
    """Open the target's DuckDB file as dbt-duckdb does: `config_options` at connect, then
    `extensions` loaded, then `settings` applied with SET (extension settings such as s3_region
    only exist after LOAD)."""
    import duckdb

    path = str(target.get("path", ":memory:"))
    config = {k: str(v) for k, v in (target.get("config_options") or {}).items()}
    try:
        conn = duckdb.connect(path, config=config)
        for extension in target.get("extensions") or []:
            name = extension if isinstance(extension, str) else extension.get("name")
            conn.load_extension(str(name))
        for key, value in (target.get("settings") or {}).items():
            if not _SETTING.match(str(key)):
                raise ConfigError(f"invalid DuckDB setting name {key!r}")
            literal = "'" + str(value).replace("'", "''") + "'"
            conn.execute(f"SET {key} = {literal}")
    except duckdb.Error as exc:
        message = scrub(first_line(str(exc)), target.secret_values())
        hint = _duckdb_hint(message, path, target)
        raise ConfigError(f"cannot open DuckDB database {path} (target "
                          f"{target.target_name!r}): {message}", hint=hint) from None
    return conn


def _duckdb_hint(message: str, path: str, target: TargetConfig) -> str:
    """What to do about a DuckDB file that does not open: the folder, the lock or the profile."""
    import os

    lowered = message.lower()
    folder = os.path.dirname(os.path.abspath(path))
    if "read-only file system" in lowered:
        return (f"the folder {folder} is on a read-only file system: make it writable, or set `path:` of target "
                f"{target.target_name!r} in {target.profiles_path} to a writable place")
    if "permission denied" in lowered:
        return f"give this user write access to {folder}, or set `path:` of target {target.target_name!r} elsewhere"
    if "no space left" in lowered:
        return f"the disk is full: free space on the device holding {folder}"
    if "lock" in lowered:
        return ("another process holds the file (the PID named: another mage-dbt run, dbt or a DuckDB client); "
                "run again once it is done")
    return f"check the target in {target.profiles_path}"


def postgres_connection(target: TargetConfig) -> Any:
    """A psycopg2 connection in autocommit, with TimeZone=UTC and the target's search_path/role."""
    import psycopg2
    from psycopg2 import sql

    t = target
    options = "-c TimeZone=UTC"
    if t.get("search_path"):
        options += " -c search_path=" + str(t.get("search_path")).replace(" ", "\\ ")
    kwargs = {
        "host": t.get("host"), "port": t.get("port"), "user": t.get("user"),
        "password": t.get("password"), "dbname": t.get("database"),
        "connect_timeout": t.get("connect_timeout", 10),
        "application_name": t.get("application_name") or "mage_dbt",
        "client_encoding": "UTF8", "options": options,
    }
    for key in ("sslmode", "sslcert", "sslkey", "sslrootcert", "keepalives_idle"):
        if t.get(key) is not None:
            kwargs[key] = t.get(key)
    try:
        conn = psycopg2.connect(**{k: v for k, v in kwargs.items() if v not in (None, "")})
        conn.autocommit = True
        if t.get("role"):
            with conn.cursor() as cur:
                cur.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(str(t.get("role")))))
    except psycopg2.Error as exc:
        message = scrub(first_line(str(exc)), t.secret_values())
        raise ConfigError(
            f"cannot connect to Postgres target {t.target_name!r} ({t.get('host')}:"
            f"{t.get('port')}/{t.database} as {t.get('user')}): {message}",
            hint=f"check the target in {t.profiles_path}") from None
    return conn
