"""Bounds on what the data folder keeps besides block outputs (those: `outputs.prune_runs`).

- `manifest_cache/`: every project revision and every parse-relevant var value adds a variant
  folder (a few MB each). The newest `MANIFEST_VARIANTS` per dbt project are kept, plus any used
  within the last `RECENTLY_USED` seconds (another process may still read it), and never the one
  in use; pruned when a new variant is written. A variant's folder is touched when it is reused,
  so "newest" means most recently used.
- `runs/<flow run id>/`: one small summary per run; the newest `RUN_RECORDS` are kept (a retry
  needs the record of the run it retries), pruned when a run writes its summary.
- `logs/dbt_invocations.jsonl`: rotated to `dbt_invocations.1.jsonl` (replacing the previous one)
  once it passes `INVOCATION_LOG_BYTES`.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

MANIFEST_VARIANTS = 10
RECENTLY_USED = 3600.0  # seconds
RUN_RECORDS = 1000
INVOCATION_LOG_BYTES = 10 * 1024 * 1024


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def touch(folder: Path) -> None:
    """Mark a cache variant as used now (its mtime orders the pruning)."""
    try:
        os.utime(folder)
    except OSError:
        pass  # a read-only cache still serves; it just is not reordered


def variant_project(folder: Path) -> str:
    """`<project>-<fingerprint>-<deps key>`: the project name may contain dashes, the keys do not."""
    return folder.name.rsplit("-", 2)[0]


def prune_manifest_cache(root: Path, in_use: Path, *, keep: int = MANIFEST_VARIANTS,
                         recent: float = RECENTLY_USED, now: float | None = None) -> list[Path]:
    """Delete the variants of `in_use`'s project beyond the `keep` most recently used ones."""
    if not root.is_dir():
        return []
    project = variant_project(in_use)
    now = time.time() if now is None else now
    variants = [f for f in root.iterdir()
                if f.is_dir() and f.name.count("-") >= 2 and variant_project(f) == project]
    variants.sort(key=_mtime, reverse=True)
    removed = []
    for folder in variants[keep:]:
        if folder == in_use or now - _mtime(folder) < recent:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def prune_run_records(runs_root: Path, *, current: str | None = None, keep: int = RUN_RECORDS) -> list[Path]:
    """Delete the oldest `runs/<id>/` folders beyond the newest `keep` (never `current`)."""
    if not runs_root.is_dir():
        return []
    folders = sorted((f for f in runs_root.iterdir() if f.is_dir()), key=_mtime, reverse=True)
    removed = []
    for folder in folders[keep:]:
        if folder.name == current:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def rotate_log(path: Path, *, max_bytes: int = INVOCATION_LOG_BYTES) -> Path | None:
    """Move `path` to `<stem>.1<suffix>` once it is larger than `max_bytes`; returns the rotated file."""
    if _size(path) <= max_bytes:
        return None
    rotated = path.with_name(f"{path.stem}.1{path.suffix}")
    try:
        os.replace(path, rotated)  # atomic: a concurrent writer appends to one file or the other
    except FileNotFoundError:
        return None  # another process rotated it first
    return rotated


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
