"""Benchmark of issue 6: a 30-day backfill of the demo's incremental models on Postgres.

Side by side in one run, on the same copy of the demo project and the same Postgres database:

  (a) `mage-dbt backfill` — one process, the manifest parsed once (here: read from the cache the
      untimed setup filled), 30 interval flow runs with per-model task runs on a real Prefect server;
  (b) the loop a user would write — `dbt run --select fct_orders fct_daily_revenue
      customer_ltv_daily --vars '{execution_date: D}'` once per date (dbt re-parses every time,
      because the vars changed).

Before each variant the dbt schemas are dropped and rebuilt by an untimed setup (seeds + staging
views), so both start from the same state; the timed part is only the 30 dates. After each
variant the three incremental tables are checksummed: both variants must produce the same rows,
or the comparison is void. The Prefect server is started for the run (tests/support) and stopped
at the end. Prints seconds per interval for both and the ratio; writes bench/results/.

    .venv/bin/python bench/bench_backfill.py [--days 30] [--start 2024-01-01]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support import postgres, prefect_server  # noqa: E402

BIN = Path(sys.executable).parent
MODELS = ("fct_orders", "fct_daily_revenue", "customer_ltv_daily")
SCHEMAS = ("analytics", "analytics_raw", "analytics_snapshots")
RESULTS = REPO / "bench" / "results"

PIPELINES = {
    "bench_base": {"description": "seeds and staging views (untimed setup)",
                   "dbt": {"project": "demo", "select": ["+stg_orders", "+stg_customers", "+stg_payments"],
                           "command": "build"}},
    "bench_daily": {"description": "the demo's incremental models, one day at a time",
                    "dbt": {"project": "demo", "select": list(MODELS), "command": "run"}},
}


def make_project(root: Path) -> Path:
    """A private copy of the demo project with the two benchmark pipelines."""
    import yaml

    project = root / "project"
    project.mkdir(parents=True)
    for name in ("mage_dbt.yaml", "profiles.yml"):
        shutil.copy2(REPO / name, project / name)
    ignore = shutil.ignore_patterns("target", "logs", "dbt_packages", "__pycache__", ".mage_dbt")
    shutil.copytree(REPO / "dbt_projects" / "demo", project / "dbt_projects" / "demo", ignore=ignore)
    (project / "flows").mkdir()
    for name, spec in PIPELINES.items():
        (project / "flows" / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return project


def run(cmd: list[str], *, cwd: Path, env: dict[str, str]) -> float:
    """Run `cmd`, fail loudly if it fails, return its wall-clock seconds."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds


def reset_schemas(env: dict[str, str]) -> None:
    import psycopg2

    with psycopg2.connect(host=env["PGHOST"], port=env["PGPORT"], user=env["PGUSER"], dbname=env["PGDATABASE"]) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            for schema in SCHEMAS:
                cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def checksums(env: dict[str, str]) -> dict[str, str]:
    """Ordered row checksum of each incremental table."""
    out = {}
    for model in MODELS:
        rows = postgres.query(env, f"select * from analytics.{model} order by 1, 2")
        out[model] = hashlib.sha256("\n".join(repr(r) for r in rows).encode()).hexdigest()[:16]
    return out


def parses(project: Path) -> int:
    log = project / ".mage_dbt" / "logs" / "dbt_invocations.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return sum(1 for line in lines if json.loads(line)["command"] == "parse")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--start", default="2024-01-01")
    args = parser.parse_args()
    dates = [(date.fromisoformat(args.start) + timedelta(days=n)).isoformat() for n in range(args.days)]

    work = Path(tempfile.mkdtemp(prefix="bench_backfill_"))
    project = make_project(work)
    server = prefect_server.start(work / "prefect")
    try:
        with postgres.temporary_database(f"bench_backfill_{os.getpid()}") as pg:
            env = {**os.environ, **server.env, **pg, "COLUMNS": "160", "DO_NOT_TRACK": "1",
                   "DBT_SEND_ANONYMOUS_USAGE_STATS": "false", "MAGE_DBT_DATA_DIR": str(project / ".mage_dbt")}
            mage, dbt = str(BIN / "mage-dbt"), str(BIN / "dbt")

            # (a) mage_dbt: untimed setup (also fills the manifest cache), then the timed backfill
            reset_schemas(pg)
            run([mage, "run", "bench_base", "-d", dates[0], "--target", "pg"], cwd=project, env=env)
            parses_before = parses(project)
            mage_seconds = run([mage, "backfill", "bench_daily", "--start", dates[0], "--end", dates[-1],
                                "--target", "pg"], cwd=project, env=env)
            mage_parses = parses(project) - parses_before
            mage_sums = checksums(pg)

            # (b) the dbt CLI loop: untimed setup, then one `dbt run` per date
            reset_schemas(pg)
            dbt_dir = project / "dbt_projects" / "demo"
            common = ["--project-dir", str(dbt_dir), "--profiles-dir", str(project), "--target", "pg"]
            run([dbt, "build", *common, "--select", "+stg_orders", "+stg_customers", "+stg_payments"],
                cwd=project, env=env)
            loop_seconds = 0.0
            for day in dates:
                loop_seconds += run([dbt, "run", *common, "--select", *MODELS, "--vars", f"{{execution_date: {day}}}"],
                                    cwd=project, env=env)
            loop_sums = checksums(pg)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    n = len(dates)
    per_mage, per_loop = mage_seconds / n, loop_seconds / n
    rows = [
        ("mage-dbt backfill (1 process)", f"{mage_seconds:.1f}", f"{per_mage:.2f}", str(mage_parses)),
        ("dbt run --vars loop", f"{loop_seconds:.1f}", f"{per_loop:.2f}", f"{n} (one per date)"),
    ]
    print(f"\n{n} daily intervals {dates[0]}..{dates[-1]}, models {', '.join(MODELS)}, Postgres")
    widths = [max(len(r[i]) for r in [("variant", "total s", "s/interval", "dbt parses"), *rows]) for i in range(4)]
    for row in [("variant", "total s", "s/interval", "dbt parses"), *rows]:
        print("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)))
    print(f"ratio (loop / mage-dbt per interval): {per_loop / per_mage:.1f}x  (target >= 5x)")
    same = mage_sums == loop_sums
    print(f"tables identical in both variants: {same} {mage_sums}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (RESULTS / f"bench_backfill-{stamp}.json").write_text(json.dumps({
        "dates": [dates[0], dates[-1]], "intervals": n, "models": MODELS,
        "mage_dbt": {"seconds": round(mage_seconds, 2), "per_interval": round(per_mage, 3), "parses": mage_parses},
        "dbt_loop": {"seconds": round(loop_seconds, 2), "per_interval": round(per_loop, 3)},
        "ratio": round(per_loop / per_mage, 2), "tables_identical": same, "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }, indent=2))
    if not same:
        raise SystemExit("the two variants produced different tables: the comparison is void")


if __name__ == "__main__":
    main()
