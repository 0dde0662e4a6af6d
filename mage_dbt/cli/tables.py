"""Result tables sized for a terminal: few columns, long text in a recap below, never 1-char columns.

The console's width decides (rich reads COLUMNS or the terminal). Tables hold short values only
(names, kinds, states, counts, times); messages, which can be hundreds of characters, go into a
recap after the table, one entry per failed or skipped row, wrapped at the width like prose.
"""

from __future__ import annotations

from typing import Iterable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

STATUS_STYLE = {"success": "green", "completed": "green", "failed": "bold red", "crashed": "bold red",
                "skipped": "yellow", "reused": "blue", "cancelled": "yellow", "running": "cyan", "not started": "dim"}
MESSAGE_LIMIT = 2000  # characters of one message in a recap


def styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, '')}]{status}[/]"


def print_run_table(console: Console, summary: dict) -> None:
    """A run's blocks: name, kind, status, seconds (and rows when a block reported any)."""
    results = summary["results"]
    with_rows = any(r.get("rows") is not None for r in results.values())
    table = Table(title=f"{summary['pipeline']} · {summary['execution_date']}", title_justify="left")
    table.add_column("block", overflow="fold", ratio=1, min_width=20)
    table.add_column("kind", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("secs", no_wrap=True, justify="right")
    if with_rows:
        table.add_column("rows", no_wrap=True, justify="right")
    for name, result in results.items():
        status = "reused" if result.get("reused") else \
            "skipped" if result.get("dbt_status") == "skipped-stale" else result["status"]
        cells = [escape(name), result["kind"], styled(status), f"{result['seconds']:.2f}"]
        if with_rows:
            cells.append("" if result.get("rows") is None else str(result["rows"]))
        table.add_row(*cells)
    console.print(table)


def print_recap(console: Console, title: str, rows: Iterable[tuple[str, str, str | None]]) -> None:
    """`title`, then one entry per (name, status, message): the full message, wrapped at the width."""
    rows = [r for r in rows if r[1] not in ("success", "completed")]
    if not rows:
        return
    console.print(f"[bold]{escape(title)}[/]")
    for name, status, message in rows:
        text = " ".join((message or "").split())[:MESSAGE_LIMIT] or "(no message)"
        console.print(f"- {escape(name)} {styled(status)}: {escape(text)}", highlight=False)


def print_run_recap(console: Console, summary: dict) -> None:
    """Failed blocks first (their messages say what broke), then skipped ones (they say why)."""
    order = {"failed": 0, "skipped": 1}
    rows = sorted(((n, r["status"], r.get("message")) for n, r in summary["results"].items()
                   if r["status"] != "cancelled"),  # Ctrl-C: the table shows them; one count line follows
                  key=lambda row: order.get(row[1], 0))
    failed = sum(1 for _, status, _ in rows if status == "failed")
    skipped = sum(1 for _, status, _ in rows if status == "skipped")
    if failed or skipped:
        print_recap(console, f"not successful: {failed} failed, {skipped} skipped", rows)


WIDE = 100  # columns from which `backfills` also shows when each backfill was created


def backfills_table(title: str, width: int) -> Table:
    """The list of backfills: id, range, intervals, states (non-zero counts; whether its process
    is alive) and, on a wide terminal, when it was created."""
    table = Table(title=title, title_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("range", overflow="fold", min_width=10)
    table.add_column("intervals", overflow="fold", min_width=9)
    table.add_column("states", overflow="fold", ratio=1, min_width=12)
    if width >= WIDE:
        table.add_column("created", no_wrap=True)
    return table


def states_cell(counts: dict[str, int], order: Iterable[str]) -> str:
    return ", ".join(styled_count(counts[s], s) for s in order if counts.get(s)) or "-"


def styled_count(count: int, status: str) -> str:
    return f"[{STATUS_STYLE.get(status, '')}]{count} {status}[/]"
