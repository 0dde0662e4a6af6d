"""Source freshness gating (`only_fresh_sources:`): skip dbt nodes whose sources have no new data.

Once per run, before the first dbt group that reads them, `dbt source freshness` runs for the
sources with a freshness configuration upstream of the pipeline's dbt nodes (one dbt invocation,
in-process, on the cached manifest). Then, per node that would run:

- a source past its `error_after` threshold (or whose freshness query failed) fails the node
  (`on_error: fail`, the default; its downstream is skipped) or is logged as a warning (`warn`);
- a node whose sources all have no data loaded since its last successful build (`max(loaded_at)`
  older than that build minus `lag_seconds`), and whose own code, config, macros and vars did not
  change since, is skipped: Prefect state Skipped with the reason, a success for its downstream,
  which decides for itself.

A node without a recorded build, without sources, or reading a source without freshness runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from mage_dbt.dbt.state_keys import upstream_sources

LOG = logging.getLogger("mage_dbt.freshness")
OWN_PARTS = ("code", "config", "macros", "vars", "environment")


@dataclass(frozen=True)
class SourceFreshness:
    status: str  # pass, warn, error, runtime error
    max_loaded_at: datetime | None
    message: str | None = None


class FreshnessGate:
    """The freshness of a run's sources, checked once, and the verdict per node."""

    def __init__(self, pipeline: Any, lag_seconds: int, on_error: str) -> None:
        self.pipeline = pipeline
        self.lag = timedelta(seconds=lag_seconds)
        self.on_error = on_error
        self._checked: dict[str, SourceFreshness] | None = None
        self._warned: set[str] = set()

    def freshness(self) -> dict[str, SourceFreshness]:
        if self._checked is None:
            self._checked = self._check()
        return self._checked

    def _check(self) -> dict[str, SourceFreshness]:
        from mage_dbt.dbt.invocation import dbt_lock, invoke_dbt

        loaded = self.pipeline.manifest
        manifest = loaded.dbt_manifest
        ids = [b.unique_id for b in self.pipeline.blocks.values() if b.unique_id]
        sources = [s for s in upstream_sources(manifest, ids) if _has_freshness(manifest.sources.get(s))]
        if not sources:
            return {}
        selectors = [f"source:{src.package_name}.{src.source_name}.{src.name}"
                     for src in (manifest.sources[s] for s in sources)]
        args = ["source", "freshness", *loaded.ref.base_args(), "--select", *selectors,
                "--log-level", "none", "--no-use-colors"]
        with dbt_lock():
            raw = invoke_dbt(args, manifest=manifest, invocation_log=loaded.ref.invocation_log,
                             node_count=len(sources))
        out: dict[str, SourceFreshness] = {}
        for item in getattr(getattr(raw, "result", None), "results", None) or ():
            node = getattr(item, "node", None)
            uid = getattr(node, "unique_id", None) or getattr(item, "unique_id", None)
            if uid:
                status = str(getattr(item.status, "value", item.status)).lower()
                out[uid] = SourceFreshness(status, getattr(item, "max_loaded_at", None),
                                           getattr(item, "message", None))
        for uid in sources:  # dbt said nothing about it: its query failed
            out.setdefault(uid, SourceFreshness("runtime error", None, "dbt source freshness gave no result"))
        return out

    def verdict(self, uid: str, record: dict | None, parts: dict, settled: set[str]) -> tuple[str, str] | None:
        """("fail" | "skip", reason) for node `uid`, or None: it runs as decided. `settled`: the
        nodes this run leaves as they are (reused or skipped): an upstream model that changed
        otherwise makes it run."""
        sources = upstream_sources(self.pipeline.manifest.view, [uid])
        if not sources:
            return None
        checked = self.freshness()
        for source in sources:
            found = checked.get(source)
            if found is not None and found.status in ("error", "runtime error"):
                why = f"source {_name(source)} is past its error threshold" if found.status == "error" else \
                    f"the freshness of source {_name(source)} could not be read ({found.message or 'error'})"
                if self.on_error == "fail":
                    return "fail", why
                if source not in self._warned:
                    self._warned.add(source)
                    LOG.warning("%s; running its downstream (only_fresh_sources.on_error: warn)", why)
        if record is None or not record.get("built_at"):
            return None
        before = record.get("parts") or {}
        if any(parts.get(p) != before.get(p) for p in OWN_PARTS):
            return None  # its own code or config changed: it runs whatever the data
        for part, value in parts.items():
            up = part[len("upstream:"):] if part.startswith("upstream:") else None
            if up and not up.startswith("source.") and value != before.get(part) and up not in settled:
                return None  # an upstream model was (or will be) rebuilt with other data
        built = datetime.fromisoformat(record["built_at"])
        for source in sources:
            found = checked.get(source)
            if found is None or found.max_loaded_at is None:
                return None  # no freshness for this source: when in doubt, run
            loaded_at = found.max_loaded_at if found.max_loaded_at.tzinfo else \
                found.max_loaded_at.replace(tzinfo=timezone.utc)
            if loaded_at >= built - self.lag:
                return None
        names = ", ".join(_name(s) for s in sources[:5])
        return "skip", f"no new data in {names} since its last build ({record['built_at'][:19]})"


def _has_freshness(source: Any) -> bool:
    if source is None or not (getattr(source, "loaded_at_field", None) or getattr(source, "loaded_at_query", None)):
        return False
    freshness = getattr(source, "freshness", None)
    return bool(freshness and (getattr(freshness.warn_after, "count", None)
                               or getattr(freshness.error_after, "count", None)))


def _name(uid: str) -> str:
    return ".".join(uid.split(".")[2:])
