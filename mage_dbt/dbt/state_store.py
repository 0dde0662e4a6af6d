"""What this project built on one target: node keys of successful builds, recorded loads, last manifest.

One folder per dbt project and target under the data folder, `state/<project>/<target>/`:

- `state.json`: per node, the key of its last successful build and its parts (so `plan` can say
  what changed), when and by which run; for incremental models every key built (one per interval,
  the newest `MAX_INTERVAL_KEYS`); per table that a Python/SQL block of this project wrote, when.
- `manifest.json`: dbt's manifest of the last run on this target that succeeded, for slim runs
  (`state:modified+ --state`).

Writers take an exclusive lock (`state.lock`) around read, change and an atomic write, so backfill
worker processes of one target never lose each other's records.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from mage_dbt.files import write_atomically

FORMAT = 1
MAX_INTERVAL_KEYS = 1000


def state_dir(data_dir: Path, project: str, target: str) -> Path:
    return data_dir / "state" / project / (target or "default")


class StateStore:
    """The records of one dbt project on one target."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "state.json"

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {"format": FORMAT, "nodes": {}, "writes": {}}
        if data.get("format") != FORMAT:  # another layout: start over (everything runs once)
            return {"format": FORMAT, "nodes": {}, "writes": {}}
        return data

    def recorded_keys(self) -> dict[str, str]:
        """node id -> key of its last successful build."""
        return {uid: entry["key"] for uid, entry in self.read()["nodes"].items() if entry.get("key")}

    @contextmanager
    def changing(self) -> Iterator[dict[str, Any]]:
        """The records to change in place; written atomically when the block ends without error."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "state.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            yield data
            write_atomically(self.path, json.dumps(data, sort_keys=True))

    def record_builds(self, builds: dict[str, dict[str, Any]], dropped: list[str], *, run_id: str,
                      replace_intervals: set[str] = frozenset()) -> None:
        """Record successful builds (id -> {key, parts, incremental}); forget `dropped` (they ran and
        failed, or ran without a trustworthy key: what they hold now is unknown)."""
        if not builds and not dropped:
            return
        now = datetime.now(timezone.utc).isoformat()
        with self.changing() as data:
            nodes = data["nodes"]
            for uid in dropped:
                nodes.pop(uid, None)
            for uid, build in builds.items():
                old = nodes.get(uid) or {}
                keys = [] if uid in replace_intervals else list(old.get("interval_keys") or [])
                entry = {"key": build["key"], "parts": build["parts"], "built_at": now, "run_id": run_id}
                if build.get("incremental"):
                    if build["key"] in keys:
                        keys.remove(build["key"])
                    entry["interval_keys"] = [*keys, build["key"]][-MAX_INTERVAL_KEYS:]
                nodes[uid] = entry

    def record_writes(self, tables: list[str], *, block: str, run_id: str) -> None:
        """Tables ("schema.table", lower case) a Python/SQL block of this project just wrote."""
        if not tables:
            return
        now = datetime.now(timezone.utc).isoformat()
        with self.changing() as data:
            for table in tables:
                data["writes"][table] = {"at": now, "block": block, "run_id": run_id}

    def forget_all(self) -> None:
        """A dbt command block ran on this target: it may have rebuilt anything."""
        with self.changing() as data:
            data["nodes"] = {}

    # -- slim runs --------------------------------------------------------------------------------
    @property
    def manifest_dir(self) -> Path:
        return self.folder / "last_success"

    def keep_manifest(self, manifest_json: Path) -> None:
        """Keep `manifest_json` as the manifest of the last successful run on this target."""
        if manifest_json.is_file():
            write_atomically(self.manifest_dir / "manifest.json", manifest_json.read_bytes())

    def has_manifest(self) -> bool:
        return (self.manifest_dir / "manifest.json").is_file()

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
