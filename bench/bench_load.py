"""Bulk load benchmark: mage_dbt `Warehouse.write()` vs `pandas.DataFrame.to_sql`.

    .venv/bin/python bench/bench_load.py [--rows 1000000] [--reps 3] [--chunksize 1000]

Generates one DataFrame (id bigint, customer int, amount float, category text, day date,
created_at timestamptz), then loads the same data into a throw-away Postgres database with
  - `write()` (COPY FROM STDIN, CSV rendered by pyarrow),
  - `DataFrame.to_sql` on a SQLAlchemy engine with default settings (method=None), the path a
    pandas user picks, and with method="multi", chunksize=N,
and into a DuckDB file with `write()` (Arrow registered + INSERT ... SELECT). Each load goes to
a fresh table (both sides create it) and is checked with count(*). Reading the rows back with
`read_sql()` (COPY TO + pyarrow) and `pandas.read_sql` is timed too. Prints medians of --reps.
Postgres comes from PGHOST/PGPORT/PGUSER/PGPASSWORD (default 127.0.0.1:5432, postgres), read
through a dbt profile like every other mage_dbt connection.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from psycopg2 import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from mage_dbt.warehouse import TargetConfig, connect, resolve_target  # noqa: E402

PROFILE = """
bench:
  target: pg
  outputs:
    pg:
      type: postgres
      host: "{{ env_var('PGHOST', '127.0.0.1') }}"
      port: "{{ env_var('PGPORT', '5432') | as_number }}"
      user: "{{ env_var('PGUSER', 'postgres') }}"
      password: "{{ env_var('PGPASSWORD', '') }}"
      dbname: "{{ env_var('MAGE_DBT_BENCH_DB') }}"
      schema: bench
    duck:
      type: duckdb
      path: "{{ env_var('MAGE_DBT_BENCH_DUCKDB') }}"
      schema: bench
"""


def make_frame(rows: int, seed: int = 42) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = np.datetime64("2024-01-01T00:00:00", "us")
    created = start + rng.integers(0, 365 * 86_400_000_000, rows).astype("timedelta64[us]")
    words = np.array([f"category_{i:03d}" for i in range(500)], dtype=object)
    return pd.DataFrame({
        "id": np.arange(rows, dtype=np.int64),
        "customer": rng.integers(1, 50_000, rows).astype(np.int32),
        "amount": np.round(rng.gamma(2.0, 40.0, rows), 2),
        "category": pd.Series(words[rng.integers(0, len(words), rows)], dtype="str"),
        "day": pd.Series(created.astype("datetime64[D]")).dt.date,
        "created_at": pd.Series(created).dt.tz_localize("UTC"),
    })


def timed(fn: Callable[[], Any]) -> float:
    begin = time.perf_counter()
    fn()
    return time.perf_counter() - begin


admin = common.pg_admin


def sqlalchemy_engine(target: TargetConfig) -> Any:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import URL

    url = URL.create("postgresql+psycopg2", username=target.get("user"),
                     password=target.get("password") or None, host=target.get("host"),
                     port=target.get("port"), database=target.database)
    return create_engine(url)  # default settings: what a pandas user would write


def count_rows(wh: Any, table: str) -> int:
    return int(wh.read_sql(f"SELECT count(*) AS n FROM bench.{table}").loc[0, "n"])


def run(rows: int, reps: int, chunksize: int, multi: bool) -> dict[str, list[float]]:
    frame = make_frame(rows)
    timings: dict[str, list[float]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    (workdir / "profiles.yml").write_text(PROFILE)
    database = f"mage_dbt_bench_load_{uuid.uuid4().hex[:8]}"
    os.environ["MAGE_DBT_BENCH_DB"] = database
    os.environ["MAGE_DBT_BENCH_DUCKDB"] = str(workdir / "load.duckdb")
    admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        pg_target = resolve_target(workdir, "bench", "pg")
        engine = sqlalchemy_engine(pg_target)
        methods: list[tuple[str, Callable[[Any, str], Any]]] = [
            ("mage_dbt write() - Postgres COPY",
             lambda wh, t: wh.write(frame, t, mode="replace")),
            ("pandas to_sql(method=None)",
             lambda wh, t: frame.to_sql(t, engine, schema="bench", if_exists="replace",
                                        index=False)),
        ]
        if multi:
            methods.append((f'pandas to_sql(method="multi", chunksize={chunksize})',
                            lambda wh, t: frame.to_sql(t, engine, schema="bench",
                                                       if_exists="replace", index=False,
                                                       method="multi", chunksize=chunksize)))
        with connect(pg_target) as wh:
            wh.write(frame.head(0), "warmup")  # creates schema bench
            for rep in range(reps):
                for number, (label, load) in enumerate(methods):
                    table = f"load_{number}_{rep}"
                    seconds = timed(lambda: load(wh, table))
                    assert count_rows(wh, table) == rows, f"{label}: wrong row count"
                    timings.setdefault(label, []).append(seconds)
                    print(f"  rep {rep + 1}: {label}: {seconds:.2f} s", flush=True)
            query = "SELECT * FROM bench.load_0_0"
            for rep in range(reps):
                timings.setdefault("mage_dbt read_sql() - Postgres COPY TO", []).append(
                    timed(lambda: wh.read_sql(query)))
                timings.setdefault("pandas read_sql (SQLAlchemy)", []).append(
                    timed(lambda: pd.read_sql(query, engine)))
        engine.dispose()
        with connect(resolve_target(workdir, "bench", "duck")) as duck:
            for rep in range(reps):
                seconds = timed(lambda: duck.write(frame, f"load_{rep}", mode="replace"))
                assert count_rows(duck, f"load_{rep}") == rows
                timings.setdefault("mage_dbt write() - DuckDB Arrow", []).append(seconds)
    finally:
        admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(database)))
    return timings


def report(rows: int, reps: int, timings: dict[str, list[float]]) -> None:
    base = statistics.median(timings["mage_dbt write() - Postgres COPY"])
    read_base = statistics.median(timings["mage_dbt read_sql() - Postgres COPY TO"])
    headers = ("method", "median s", "min s", "max s", "rows/s", "x write()")
    lines = []
    for label, values in timings.items():
        median = statistics.median(values)
        reference = read_base if "read" in label else base
        lines.append((label, f"{median:.2f}", f"{min(values):.2f}", f"{max(values):.2f}",
                      f"{rows / median:,.0f}", f"{median / reference:.1f}"))
    widths = [max(len(row[i]) for row in (headers, *lines)) for i in range(len(headers))]
    print(f"\nrows: {rows:,}   repetitions: {reps}   (x write(): median / median of our "
          f"write, or of our read_sql for the read rows)")
    for i, row in enumerate((headers, *lines)):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                        for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--chunksize", type=int, default=1000, help='for to_sql method="multi"')
    parser.add_argument("--no-multi", action="store_true", help='skip to_sql method="multi"')
    parser.add_argument("--json", type=Path, help="also write the raw timings to this file")
    args = parser.parse_args(argv)
    print(f"generating {args.rows:,} rows; {args.reps} repetitions", flush=True)
    timings = run(args.rows, args.reps, args.chunksize, not args.no_multi)
    report(args.rows, args.reps, timings)
    if args.json:
        args.json.write_text(json.dumps({"rows": args.rows, "reps": args.reps,
                                         "seconds": timings}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
