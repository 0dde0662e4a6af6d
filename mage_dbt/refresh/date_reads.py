"""Which dbt nodes read the run's dates, and the rule that a full refresh of those needs a date.

A model that filters on `var('execution_date')` (or `execution_ts`, `interval_start`,
`interval_end`), in its own SQL or in a macro it calls, builds only that date's rows. A full
refresh drops the table first, so a full refresh for the wrong date (the CLI's default is now)
leaves the table empty or nearly so, silently. `mage-dbt full-refresh` therefore refuses to run
such models without an explicit date; models that do not read the dates keep working without one.

The answer comes from the parsed manifest: the node's raw SQL and, recursively, the SQL of the
macros it depends on (dbt records both), searched for a `var()` call naming a run-date var.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

from mage_dbt.errors import ConfigError
from mage_dbt.dbt.manifest import RUN_VARS

_VAR_CALL = re.compile(
    r"""\bvar\s*\(\s*["'](%s)["']""" % "|".join(sorted(RUN_VARS))
)


def reads_run_dates(dbt_manifest: Any, unique_id: str) -> bool:
    """True when the node's SQL, or a macro it (transitively) calls, reads a run-date var."""
    node = dbt_manifest.nodes.get(unique_id)
    if node is None:
        return False
    if _VAR_CALL.search(getattr(node, "raw_code", "") or ""):
        return True
    seen: set[str] = set()
    todo = list(getattr(getattr(node, "depends_on", None), "macros", None) or ())
    while todo:
        macro_id = todo.pop()
        if macro_id in seen:
            continue
        seen.add(macro_id)
        macro = dbt_manifest.macros.get(macro_id)
        if macro is None:
            continue
        if _VAR_CALL.search(macro.macro_sql or ""):
            return True
        todo.extend(getattr(macro.depends_on, "macros", None) or ())
    return False


def date_reading_blocks(pipeline: Any, names: Iterable[str]) -> list[str]:
    """The blocks among `names` (dbt nodes of `pipeline`) whose SQL reads the run's dates."""
    if pipeline.manifest is None:
        return []
    dbt_manifest = pipeline.manifest.view  # manifest.json: no dbt import for a scan
    found = []
    for name in names:
        unique_id = pipeline.blocks[name].unique_id
        if unique_id and reads_run_dates(dbt_manifest, unique_id):
            found.append(name)
    return sorted(found)


def require_refresh_date(
    pipeline: Any, name: str, refresh: Sequence[str], downstream: Sequence[str] = (), *, is_pipeline: bool = True
) -> None:
    """Refuse a dateless full refresh of models that filter on the run date (they would be rebuilt
    for today, usually with no source rows); a no-op when none of them reads the dates."""
    readers = date_reading_blocks(pipeline, [*refresh, *downstream])
    if not readers:
        return
    rebuilt = [r for r in readers if r in refresh] or readers
    raise ConfigError(
        f"full refresh of {', '.join(readers)} needs a date: "
        f"{'they read' if len(readers) > 1 else 'it reads'} var('execution_date'), so without -d it would "
        f"be rebuilt for today only (likely empty)",
        hint="pass the date to rebuild for (e.g. -d 2024-02-01)" + (
            f", or rebuild a range with history: mage-dbt rebuild {name} --select {' '.join(rebuilt)} "
            "--start DATE --end DATE" if is_pipeline else ""),
    )
