"""Warehouse I/O against real DuckDB files and a real PostgreSQL server.

Behaviour tests run on both adapters (the parametrized `target` fixture). DuckDB: a fresh file in
tmp_path per test. Postgres: one database per pytest session (per xdist worker), made with
CREATE DATABASE and dropped at the end; every test writes into its own schema. When Postgres is
down it is started with pg_ctlcluster; if it stays unreachable the Postgres cases skip, except
under CI=true, where they fail.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import psycopg2
import pyarrow as pa
import pytest
from psycopg2 import sql

from mage_dbt.errors import BlockError
from mage_dbt.warehouse import TargetConfig, Warehouse, connect, resolve_target

PROFILES = """
wh_tests:
  target: duck
  outputs:
    duck:
      type: duckdb
      path: "{{ env_var('WH_TEST_DUCKDB_PATH') }}"
      schema: "{{ env_var('WH_TEST_SCHEMA') }}"
    pg:
      type: postgres
      host: "{{ env_var('PGHOST', '127.0.0.1') }}"
      port: "{{ env_var('PGPORT', '5432') | as_number }}"
      user: "{{ env_var('PGUSER', 'postgres') }}"
      password: "{{ env_var('PGPASSWORD', '') }}"
      dbname: "{{ env_var('WH_TEST_PG_DATABASE') }}"
      schema: "{{ env_var('WH_TEST_SCHEMA') }}"
"""
UTC = dt.timezone.utc
PLUS_5 = dt.timezone(dt.timedelta(hours=5))


def _admin_params() -> dict[str, Any]:
    return {"host": os.environ.get("PGHOST", "127.0.0.1"),
            "port": int(os.environ.get("PGPORT", "5432")),
            "user": os.environ.get("PGUSER", "postgres"), "dbname": "postgres",
            "connect_timeout": 5}


def _start_local_postgres() -> None:
    if not shutil.which("pg_ctlcluster") or not Path("/etc/postgresql").is_dir():
        return
    for version in sorted(os.listdir("/etc/postgresql")):
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                       capture_output=True, timeout=120, check=False)


def _admin_connection() -> Any:
    try:
        return psycopg2.connect(**_admin_params())
    except psycopg2.OperationalError:
        _start_local_postgres()
    deadline = time.monotonic() + 30
    while True:
        try:
            return psycopg2.connect(**_admin_params())
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    try:
        admin = _admin_connection()
    except psycopg2.OperationalError as exc:
        message = f"PostgreSQL is unreachable: {str(exc).strip().splitlines()[0]}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    admin.autocommit = True
    name = f"mage_dbt_wh_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
        admin.close()


@pytest.fixture(scope="session")
def profiles_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wh_profiles")
    (path / "profiles.yml").write_text(textwrap.dedent(PROFILES))
    return path


@pytest.fixture(params=["duckdb", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path, profiles_dir: Path,
           monkeypatch: pytest.MonkeyPatch) -> TargetConfig:
    monkeypatch.setenv("WH_TEST_SCHEMA", f"s_{uuid.uuid4().hex[:10]}")
    if request.param == "duckdb":
        monkeypatch.setenv("WH_TEST_DUCKDB_PATH", str(tmp_path / "wh.duckdb"))
        return resolve_target(profiles_dir, "wh_tests", "duck")
    monkeypatch.setenv("WH_TEST_PG_DATABASE", request.getfixturevalue("pg_database"))
    return resolve_target(profiles_dir, "wh_tests", "pg")


@pytest.fixture()
def wh(target: TargetConfig) -> Iterator[Warehouse]:
    with connect(target) as warehouse:
        yield warehouse


def ph(wh: Warehouse) -> str:
    """The driver's positional placeholder."""
    return "?" if wh.target.type == "duckdb" else "%s"


def records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts with every kind of missing value turned into None."""
    def clean(value: Any) -> Any:
        if value is None or value is pd.NA or value is pd.NaT:
            return None
        return None if isinstance(value, float) and math.isnan(value) else value
    return [{k: clean(v) for k, v in row.items()} for row in df.to_dict("records")]


def table_rows(wh: Warehouse, table: str, order: str = "seq") -> list[dict[str, Any]]:
    return records(wh.read_sql(f'SELECT * FROM "{wh.target.schema}"."{table}" ORDER BY {order}'))


def column_types(wh: Warehouse, table: str) -> dict[str, str]:
    frame = wh.read_sql(
        f"SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
        f"{ph(wh)} AND table_name = {ph(wh)} ORDER BY ordinal_position",
        [wh.target.schema, table])
    return {row["column_name"]: row["data_type"].lower() for row in records(frame)}


def sample_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "seq": pd.array([1, 2, 3, 4], dtype="Int64"),
        "id": pd.array([1, None, -7, 2**62], dtype="Int64"),
        "amount": [0.1 + 0.2, None, float("inf"), -1.5e300],
        "name": ["plain", "", None, 'quote " comma , newline\n and ünïcode ✓'],
        "flag": pd.array([True, False, None, True], dtype="boolean"),
        "day": [dt.date(2024, 1, 1), dt.date(1999, 12, 31), None, dt.date(2024, 2, 29)],
        "at": pd.Series([dt.datetime(2024, 1, 1, 10, 0, 0, 123456, tzinfo=UTC),
                         dt.datetime(2024, 6, 1, 23, 30, tzinfo=PLUS_5), None,
                         dt.datetime(1970, 1, 1, tzinfo=UTC)]).astype("datetime64[us, UTC]"),
        "at_berlin": pd.Series(pd.to_datetime(["2024-07-01 12:00", "2024-01-01 00:30", None,
                                                "2024-10-27 02:30"])).dt.tz_localize(
                                                    "Europe/Berlin", ambiguous=True),
        "local_at": pd.Series([dt.datetime(2024, 1, 1, 8), None,
                               dt.datetime(2000, 2, 29, 23, 59, 59),
                               dt.datetime(2024, 1, 1)]).astype("datetime64[us]"),
    })


def orders(day: dt.date, ids: list[int], note: str = "v1") -> pd.DataFrame:
    return pd.DataFrame({"seq": ids, "day": [day] * len(ids), "note": [note] * len(ids)})


D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)

EXPECTED_TYPES = {
    "duckdb": {"seq": "bigint", "id": "bigint", "amount": "double", "name": "varchar",
               "flag": "boolean", "day": "date", "at": "timestamp with time zone",
               "at_berlin": "timestamp with time zone", "local_at": "timestamp"},
    "postgres": {"seq": "bigint", "id": "bigint", "amount": "double precision", "name": "text",
                 "flag": "boolean", "day": "date", "at": "timestamp with time zone",
                 "at_berlin": "timestamp with time zone",
                 "local_at": "timestamp without time zone"},
}


def test_round_trip_of_types_and_nulls(wh: Warehouse) -> None:
    frame = sample_frame()
    assert isinstance(wh, Warehouse)
    assert wh.write(frame, "typed") == 4
    assert column_types(wh, "typed") == EXPECTED_TYPES[wh.target.type]
    back = wh.read_sql(f'SELECT * FROM "{wh.target.schema}".typed ORDER BY seq')
    assert records(back) == records(frame)
    assert str(back["id"].dtype) == "Int64" and str(back["flag"].dtype) == "boolean"
    assert str(back["at"].dtype) == "datetime64[us, UTC]"
    assert back.loc[1, "name"] == "" and back.isna().loc[2, "name"]  # '' is not NULL


def test_arrow_table_input(wh: Warehouse) -> None:
    table = pa.table({
        "seq": pa.array([1, 2], pa.int32()),
        "ratio": pa.array([0.5, None], pa.float32()),
        "kind": pa.array(["a", "b"]).dictionary_encode(),
        "label": pa.array(["x", None], pa.large_string()),
    })
    assert wh.write(table, "arrowed") == 2
    types = column_types(wh, "arrowed")
    assert types["seq"] == "integer" and types["kind"] in ("varchar", "text")
    assert table_rows(wh, "arrowed") == [
        {"seq": 1, "ratio": 0.5, "kind": "a", "label": "x"},
        {"seq": 2, "ratio": None, "kind": "b", "label": None}]


def test_append_creates_the_table_then_adds_rows(wh: Warehouse) -> None:
    wh.write(orders(D1, [1, 2]), "orders")
    wh.write(orders(D2, [3]), "orders", mode="append")
    assert [r["seq"] for r in table_rows(wh, "orders")] == [1, 2, 3]


def test_replace_swaps_the_content_and_may_redefine_columns(wh: Warehouse) -> None:
    wh.write(orders(D1, [1, 2, 3]), "orders")
    wh.write(orders(D2, [7]), "orders", mode="replace")
    assert table_rows(wh, "orders") == [{"seq": 7, "day": D2, "note": "v1"}]
    wh.write(pd.DataFrame({"seq": [8], "total": [1.25]}), "orders", mode="replace")
    assert table_rows(wh, "orders") == [{"seq": 8, "total": 1.25}]


def test_replace_partition_is_idempotent(wh: Warehouse) -> None:
    wh.write(orders(D1, [1, 2]), "orders")
    wh.write(orders(D2, [3, 4, 5]), "orders")
    for _ in range(2):  # the same execution date, run twice
        wh.write(orders(D2, [3, 4], note="v2"), "orders", mode="replace_partition",
                 partition_column="day", partition_value=D2)
        assert table_rows(wh, "orders") == [
            {"seq": 1, "day": D1, "note": "v1"}, {"seq": 2, "day": D1, "note": "v1"},
            {"seq": 3, "day": D2, "note": "v2"}, {"seq": 4, "day": D2, "note": "v2"}]
    # a partition value given as text is cast to the column type
    wh.write(orders(D1, [9]), "orders", mode="replace_partition", partition_column="day",
             partition_value="2024-03-01")
    assert [r["seq"] for r in table_rows(wh, "orders")] == [3, 4, 9]


def test_replace_partition_creates_a_missing_table(wh: Warehouse) -> None:
    wh.write(orders(D1, [1]), "fresh", mode="replace_partition", partition_column="day",
             partition_value=D1)
    assert table_rows(wh, "fresh") == [{"seq": 1, "day": D1, "note": "v1"}]


def test_replace_partition_refuses_rows_of_other_partitions(wh: Warehouse) -> None:
    wh.write(orders(D1, [1]), "orders")
    mixed = pd.concat([orders(D1, [5]), orders(D2, [6])])
    with pytest.raises(BlockError, match=r"1 row\(s\) have day other than"):
        wh.write(mixed, "orders", mode="replace_partition", partition_column="day",
                 partition_value=D1)
    assert [r["seq"] for r in table_rows(wh, "orders")] == [1]


def test_column_clash_names_table_and_columns_and_changes_nothing(wh: Warehouse) -> None:
    wh.write(orders(D1, [1, 2]), "orders")
    before = table_rows(wh, "orders")
    clash = pd.DataFrame({"seq": [3], "day": ["2024-03-01"], "comment": ["x"]})
    where = f"{wh.target.schema}.orders"
    for mode, extra in (("append", {}), ("replace_partition",
                                         {"partition_column": "seq", "partition_value": 3})):
        with pytest.raises(BlockError) as info:
            wh.write(clash, "orders", mode=mode, **extra)
        message = str(info.value)
        assert "\n" not in message.split(" — ")[0]
        assert f"cannot write to {where}: columns clash with the existing table" in message
        assert "missing from the DataFrame: note" in message
        assert "not in the table: comment" in message
        assert "incompatible types: day (string into date)" in message.lower()
        assert table_rows(wh, "orders") == before


def test_failed_load_rolls_back_the_delete(wh: Warehouse) -> None:
    small = pa.table({"seq": pa.array([1, 2], pa.int32()), "day": [D1, D1]})
    wh.write(small, "narrow")
    overflow = pa.table({"seq": pa.array([2**40], pa.int64()), "day": [D1]})
    for mode, extra in (("replace", {}), ("replace_partition",
                                          {"partition_column": "day", "partition_value": D1})):
        with pytest.raises(BlockError, match=r"writing to .*narrow failed \(rolled back\)"):
            wh.write(overflow, "narrow", mode=mode, **extra)
        assert [r["seq"] for r in table_rows(wh, "narrow")] == [1, 2]


def test_identifiers_are_quoted(wh: Warehouse) -> None:
    wh.write(orders(D1, [1]), "victim")
    nasty = 'odd "name"; DROP TABLE victim; --'
    frame = pd.DataFrame({"seq": [1], 'we"ird col': ["ok"]})
    wh.write(frame, nasty)
    wh.write(frame, nasty, mode="replace_partition", partition_column='we"ird col',
             partition_value="ok")
    quoted = '"' + nasty.replace('"', '""') + '"'
    back = wh.read_sql(f'SELECT * FROM "{wh.target.schema}".{quoted}')
    assert records(back) == [{"seq": 1, 'we"ird col': "ok"}]
    assert len(table_rows(wh, "victim")) == 1


def test_dotted_table_name_creates_the_schema(wh: Warehouse) -> None:
    raw = f"raw_{uuid.uuid4().hex[:8]}"
    wh.write(orders(D1, [1]), f"{raw}.orders")
    assert records(wh.read_sql(f"SELECT seq FROM {raw}.orders")) == [{"seq": 1}]


def test_writing_into_a_view_is_refused(wh: Warehouse) -> None:
    wh.write(orders(D1, [1]), "orders")
    schema = wh.target.schema
    wh.read_sql(f"CREATE VIEW {schema}.orders_v AS SELECT * FROM {schema}.orders")
    with pytest.raises(BlockError, match=rf"cannot write to {schema}.orders_v: it is a view"):
        wh.write(orders(D1, [2]), "orders_v")


def test_read_sql_with_params_and_errors(wh: Warehouse) -> None:
    wh.write(orders(D1, [1, 2, 3]), "orders")
    frame = wh.read_sql(f"SELECT seq FROM {wh.target.schema}.orders WHERE seq >= {ph(wh)} "
                        f"ORDER BY seq", [2])
    assert frame["seq"].tolist() == [2, 3]
    empty = wh.read_sql(f"SELECT seq, day FROM {wh.target.schema}.orders WHERE seq > 99")
    assert list(empty.columns) == ["seq", "day"] and len(empty) == 0
    with pytest.raises(BlockError, match="query failed on target"):
        wh.read_sql("SELECT * FROM no_such_table_anywhere")


def test_bad_write_arguments(wh: Warehouse) -> None:
    frame = orders(D1, [1])
    with pytest.raises(BlockError, match="unknown mode 'upsert'"):
        wh.write(frame, "t", mode="upsert")  # type: ignore[arg-type]
    with pytest.raises(BlockError, match="only apply to mode='replace_partition'"):
        wh.write(frame, "t", partition_column="day", partition_value=D1)
    with pytest.raises(BlockError, match="needs partition_column"):
        wh.write(frame, "t", mode="replace_partition")
    with pytest.raises(BlockError, match="partition column 'nope' is not a column"):
        wh.write(frame, "t", mode="replace_partition", partition_column="nope",
                 partition_value=1)
    with pytest.raises(BlockError, match="takes a pandas DataFrame or a pyarrow Table, got list"):
        wh.write([{"a": 1}], "t")  # type: ignore[arg-type]


# --- Postgres only ---------------------------------------------------------------------------

@pytest.fixture()
def pg(profiles_dir: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("WH_TEST_SCHEMA", f"s_{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("WH_TEST_PG_DATABASE", pg_database)
    with connect(resolve_target(profiles_dir, "wh_tests", "pg")) as warehouse:
        yield warehouse


def test_postgres_read_falls_back_for_types_copy_cannot_carry(pg: Any) -> None:
    frame = pg.read_sql("SELECT '{\"a\": 1}'::jsonb AS doc, ARRAY[1, 2] AS nums, 3 AS n; ")
    assert records(frame) == [{"doc": {"a": 1}, "nums": [1, 2], "n": 3}]
    frame = pg.read_sql("SELECT 'infinity'::timestamp AS t, 1 AS n -- trailing comment")
    assert frame.loc[0, "n"] == 1
    assert pg.read_sql("CREATE TEMP TABLE x (a int)").empty  # statements without rows work
    assert pg.read_sql("SELECT count(*) AS n FROM x").loc[0, "n"] == 0
    assert pg.connection.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE


def test_postgres_failed_first_write_leaves_no_table(pg: Any) -> None:
    with pytest.raises(BlockError, match="rolled back"):
        pg.write(pd.DataFrame({"s": ["fine", "nul \x00 byte"]}), "never")
    leftover = pg.read_sql("SELECT count(*) AS n FROM pg_namespace WHERE nspname = %s",
                           [pg.target.schema])
    assert leftover.loc[0, "n"] == 0  # the schema created in the transaction is gone too
    assert pg.connection.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE


def test_postgres_replace_blocked_by_dependent_view_rolls_back(pg: Any) -> None:
    pg.write(orders(D1, [1]), "orders")
    schema = pg.target.schema
    pg.read_sql(f"CREATE VIEW {schema}.v AS SELECT seq FROM {schema}.orders")
    with pytest.raises(BlockError) as info:
        pg.write(pd.DataFrame({"other": [1]}), "orders", mode="replace")
    assert "drop the dependent views first" in str(info.value)
    assert records(pg.read_sql(f"SELECT * FROM {schema}.v")) == [{"seq": 1}]


# --- DuckDB only -----------------------------------------------------------------------------

def test_duckdb_file_is_released_after_the_block(profiles_dir: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "shared.duckdb"
    monkeypatch.setenv("WH_TEST_DUCKDB_PATH", str(path))
    monkeypatch.setenv("WH_TEST_SCHEMA", "main")
    with connect(resolve_target(profiles_dir, "wh_tests", "duck")) as warehouse:
        warehouse.write(orders(D1, [1, 2]), "orders")
    # another process (as dbt would be) can open the file for writing right afterwards
    code = ("import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
            "print(c.execute('select count(*) from main.orders').fetchone()[0])")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "2"


def test_duckdb_file_named_like_the_schema(profiles_dir: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # bench.duckdb is catalog "bench": an unqualified "bench"."t" would be ambiguous
    monkeypatch.setenv("WH_TEST_DUCKDB_PATH", str(tmp_path / "bench.duckdb"))
    monkeypatch.setenv("WH_TEST_SCHEMA", "bench")
    with connect(resolve_target(profiles_dir, "wh_tests", "duck")) as warehouse:
        for _ in range(2):
            warehouse.write(orders(D1, [1, 2]), "t", mode="replace_partition",
                            partition_column="day", partition_value=D1)
        assert records(warehouse.read_sql("SELECT seq FROM bench.bench.t ORDER BY seq")) == [
            {"seq": 1}, {"seq": 2}]
