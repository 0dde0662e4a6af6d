"""Small mage_dbt projects of our own under tests/fixtures/, copied to a temp folder per test.

`shop_mixed`: one dbt project `shop` with every materialization mage_dbt treats differently — a
seed, two ephemeral models (one on top of the other, the second reading the execution date), an
incremental model built from them, a table, a view, a snapshot and tests — plus the pipeline
`shop` (every node). DuckDB by default (`.mage_dbt/shop.duckdb`), `--target pg` for PostgreSQL.
"""

from __future__ import annotations

import csv
import shutil
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SHOP = Path("dbt_projects") / "shop"


def copy_fixture(name: str, dest: Path) -> Path:
    """A fresh copy of tests/fixtures/<name> (without generated files) at `dest`."""
    ignore = shutil.ignore_patterns("target", "logs", "dbt_packages", "__pycache__", ".mage_dbt")
    shutil.copytree(FIXTURES / name, dest, ignore=ignore)
    return dest


def shop_sales() -> list[dict]:
    with (FIXTURES / "shop_mixed" / SHOP / "seeds" / "raw_sales.csv").open() as handle:
        return list(csv.DictReader(handle))


def expected_daily_sales(days: list[str]) -> list[tuple]:
    """(day, sales, revenue, large sales) rows daily_sales should hold after runs of `days`."""
    rows: dict[str, list] = defaultdict(lambda: [0, Decimal("0"), 0])
    for sale in shop_sales():
        if sale["sold_on"] in days:
            row = rows[sale["sold_on"]]
            amount = Decimal(sale["amount"])
            row[0] += 1
            row[1] += amount
            row[2] += amount >= 5
    return [(day, *rows[day]) for day in sorted(rows)]


def shop_duckdb(project: Path, sql: str) -> list[tuple]:
    import duckdb

    with duckdb.connect(str(project / ".mage_dbt" / "shop.duckdb"), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def duckdb_file_in(project: Path, folder: Path) -> Path:
    """Point the demo project's DuckDB target at `folder`/demo.duckdb (profiles.yml rewritten)."""
    folder.mkdir(parents=True, exist_ok=True)
    profiles = project / "profiles.yml"
    profiles.write_text(profiles.read_text().replace(
        "path: \"{{ env_var('MAGE_DBT_DATA_DIR', '.mage_dbt') }}/demo.duckdb\"", f"path: {folder}/demo.duckdb"))
    assert f"path: {folder}/demo.duckdb" in profiles.read_text()
    return folder / "demo.duckdb"
