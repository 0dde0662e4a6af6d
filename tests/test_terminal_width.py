"""Result tables fit the terminal (COLUMNS=80 and 120): no line wider than the terminal, names in
columns wide enough to read, and every failure's full message in a recap after the run table."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import cli
from tests.support.runs import flow_run_id

# Fails with a long message (DuckDB's conversion error names the value and the types).
BROKEN = "select cast('this text is certainly not a number, whatever the warehouse thinks' as integer) as n\n"


def _lines(text: str) -> list[str]:
    return text.rstrip("\n").splitlines()


def _column_width(out: str, header: str) -> int:
    """Characters between the borders of the table column whose header is `header`."""
    line = next(l for l in _lines(out) if re.search(rf"┃ {header}\s+┃", l))
    cell = next(c for c in line.split("┃") if c.strip() == header)
    return len(cell) - 2


@pytest.mark.parametrize("columns", [80, 120])
def test_run_table_fits_and_recaps_failures(demo_project, columns):
    (demo_project / "dbt_projects" / "demo" / "models" / "marts" / "broken_model.sql").write_text(BROKEN)
    result = cli(demo_project, "run", "demo", "-d", "2024-02-01", env={"COLUMNS": str(columns)})
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    too_wide = [l for l in _lines(result.stdout) if len(l) > columns]
    assert not too_wide, too_wide
    width = _column_width(result.stdout, "block")
    assert width >= (30 if columns == 80 else 60), width

    summary = json.loads((demo_project / ".mage_dbt" / "runs" / flow_run_id(result.stdout) / "summary.json").read_text())
    failed = summary["results"]["broken_model"]
    assert failed["status"] == "failed" and len(failed["message"]) > columns  # longer than a line
    recap = result.stdout[result.stdout.index("not successful: 1 failed"):]
    flat = " ".join(recap.split())
    assert f"- broken_model failed: {' '.join(failed['message'].split())}" in flat  # the whole message
    # Names that fit the block column stand on one line; no name takes more than 3 (the longest
    # demo test name has 90 characters).
    cells = [l.split("│")[1].strip() for l in _lines(result.stdout) if l.startswith("│")]
    for name in summary["results"]:
        if len(name) <= width:
            assert name in cells, name
        assert len(name) <= 3 * width, name


def test_backfills_tables_fit_80_and_120_columns(demo_project):
    started = cli(demo_project, "backfill", "demo", "--start", "2024-02-01", "--end", "2024-02-02",
                  "--select", "raw_orders", env={"COLUMNS": "80"})
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    assert all(len(l) <= 80 for l in _lines(started.stdout)), started.stdout  # the progress bar too
    backfill_id = re.search(r"backfill (\S+): demo", started.stdout).group(1)

    for columns in (80, 120):
        listing = cli(demo_project, "backfills", env={"COLUMNS": str(columns)})
        assert listing.returncode == 0, listing.stderr[-3000:]
        assert all(len(l) <= columns for l in _lines(listing.stdout)), listing.stdout
        row = next(l for l in _lines(listing.stdout) if backfill_id in l)  # the id is never cut
        cells = [c.strip() for c in row.split("│")[1:-1]]
        assert cells[2:4] == ["2 day", "2 completed"], listing.stdout
        assert ("created" in listing.stdout) is (columns >= 100)
        assert _column_width(listing.stdout, "range") >= 10

        detail = cli(demo_project, "backfills", backfill_id, env={"COLUMNS": str(columns)})
        assert detail.returncode == 0, detail.stderr[-3000:]
        assert all(len(l) <= columns for l in _lines(detail.stdout)), detail.stdout
        assert len([l for l in _lines(detail.stdout) if re.match(r"│ 2024-02-0[12] +│ completed", l)]) == 2
