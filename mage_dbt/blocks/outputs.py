"""Data products: the stored outputs of Python and SQL blocks, per pipeline run.

Layout: `<data_dir>/outputs/<pipeline>/<run_id>/<block>.parquet` for pandas DataFrames/Series and
Arrow tables (written with pyarrow; they read back as the same type), `<block>.json` for every
other value (None, numbers, strings, lists, dicts; dates become ISO strings, Decimals floats).
Each run folder holds `_run.json` (run id, execution date, creation time, the runs it falls back
to). Files are written to a temporary name and renamed, so a reader never sees half an output; a
folder that cannot be written (read-only, permissions, disk full) is a `FileSystemError` naming it,
and `check_data_dir` finds that out before a run starts.

A downstream block (in this process or another one) reads an output back with `store[block]`.
A retried run reads the outputs of the run it retries: create its store as
`OutputStore(data_dir, pipeline, new_run_id, fallback_run_ids=[original_run_id])`; a block output
missing from the new run is then looked up in the original run (first match wins).

Retention: at the start of every run `begin()` deletes the output folders of runs (of every
pipeline of the project) created more than `output_retention_days` days ago (`mage_dbt.yaml`,
default 14; 0 turns pruning off). The current run and its fallback runs are never deleted, so
retry a run within the retention period.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mage_dbt.errors import FileSystemError, MageDbtError
from mage_dbt.files import check_writable, replacing, write_atomically

RUN_FILE = "_run.json"
DATA_DIR_NOTE = "the data folder is data_dir in mage_dbt.yaml (or MAGE_DBT_DATA_DIR)"
_META_KEY = b"mage_dbt"
_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class OutputNotFound(MageDbtError, KeyError):
    """No stored output for a block in a run (nor in its fallback runs)."""

    __str__ = MageDbtError.__str__


@dataclass(frozen=True)
class StoredOutput:
    """Where one block output lives and what it is."""

    block: str
    run_id: str
    path: Path
    kind: str  # pandas | series | arrow | json
    rows: int | None


def outputs_root(data_dir: Path) -> Path:
    return Path(data_dir) / "outputs"


def _checked(name: str, what: str) -> str:
    if not name or not _SAFE.match(name) or name in (".", ".."):
        raise MageDbtError(f"invalid {what} {name!r} for the output store",
                           hint="use letters, digits, '_', '-' and '.'")
    return name


class OutputStore:
    """Block outputs of one run of one pipeline; a mapping from block name to value."""

    def __init__(self, data_dir: Path | str, pipeline: str, run_id: str,
                 fallback_run_ids: Iterable[str] = ()) -> None:
        self.data_dir = Path(data_dir)
        self.pipeline = _checked(pipeline, "pipeline name")
        self.run_id = _checked(str(run_id), "run id")
        self.fallback_run_ids = tuple(_checked(str(r), "run id") for r in fallback_run_ids)

    def __repr__(self) -> str:
        return f"OutputStore({self.pipeline!r}, run={self.run_id!r}, fallbacks={self.fallback_run_ids!r})"

    # -- folders ---------------------------------------------------------------------------------
    def run_dir(self, run_id: str | None = None) -> Path:
        return outputs_root(self.data_dir) / self.pipeline / (run_id or self.run_id)

    def begin(self, *, execution_date: str | None = None, retention_days: int | None = None) -> list[Path]:
        """Mark the start of the run (`_run.json`) and prune expired runs; returns pruned folders."""
        folder = self.run_dir()
        _make_folder(folder)
        marker = {
            "pipeline": self.pipeline, "run_id": self.run_id, "execution_date": execution_date,
            "created_at": time.time(), "fallback_run_ids": list(self.fallback_run_ids),
        }
        _atomic_write(folder / RUN_FILE, json.dumps(marker, indent=2).encode())
        if retention_days is None:
            return []
        return prune_runs(self.data_dir, retention_days, keep={self.run_id, *self.fallback_run_ids})

    # -- mapping protocol --------------------------------------------------------------------------
    def __setitem__(self, block: str, value: Any) -> None:
        self.save(block, value)

    def __getitem__(self, block: str) -> Any:
        return self.load(block)

    def __contains__(self, block: object) -> bool:
        return isinstance(block, str) and self.find(block) is not None

    def get(self, block: str, default: Any = None) -> Any:
        found = self.find(block)
        return default if found is None else read_output(found)

    # -- read / write ------------------------------------------------------------------------------
    def save(self, block: str, value: Any) -> StoredOutput:
        """Store `value` as the output of `block` in this run (replacing an earlier one)."""
        _checked(block, "block name")
        folder = self.run_dir()
        _make_folder(folder)
        kind, payload = encode_output(value, block=block, run_id=self.run_id)
        suffix = ".json" if kind == "json" else ".parquet"
        path = folder / f"{block}{suffix}"
        if kind == "json":
            _atomic_write(path, payload)
            rows = len(value) if isinstance(value, (list, tuple, dict)) else None
        else:
            import pyarrow.parquet as pq

            with replacing(path, also=DATA_DIR_NOTE) as tmp:
                pq.write_table(payload, tmp)
            rows = payload.num_rows
        other = path.with_suffix(".parquet" if kind == "json" else ".json")
        other.unlink(missing_ok=True)
        return StoredOutput(block=block, run_id=self.run_id, path=path, kind=kind, rows=rows)

    def find(self, block: str) -> StoredOutput | None:
        """Where the output of `block` is: this run first, then the fallback runs in order."""
        for run_id in (self.run_id, *self.fallback_run_ids):
            folder = self.run_dir(run_id)
            for suffix in (".parquet", ".json"):
                path = folder / f"{block}{suffix}"
                if path.is_file():
                    return describe_file(path, block=block, run_id=run_id)
        return None

    def load(self, block: str) -> Any:
        found = self.find(block)
        if found is None:
            runs = ", ".join((self.run_id, *self.fallback_run_ids))
            raise OutputNotFound(
                f"no stored output of block '{block}' in pipeline '{self.pipeline}' (runs: {runs})",
                hint="run that block in this run too, or retry a run in which it succeeded")
        return read_output(found)

    def blocks(self) -> list[str]:
        """Blocks with a stored output in this run (fallbacks not included)."""
        folder = self.run_dir()
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.iterdir() if p.suffix in (".parquet", ".json")
                      and p.name != RUN_FILE and not p.name.startswith("."))


# -- encoding ----------------------------------------------------------------------------------------
def encode_output(value: Any, *, block: str, run_id: str) -> tuple[str, Any]:
    """(kind, payload): an Arrow table for tabular values, JSON bytes for the rest."""
    import pandas as pd
    import pyarrow as pa

    kind = None
    table = None
    if isinstance(value, pd.DataFrame):
        kind, table = "pandas", _from_pandas(value, block)
    elif isinstance(value, pd.Series):
        frame = value.to_frame(name=str(value.name) if value.name is not None else "value")
        kind, table = "series", _from_pandas(frame, block)
    elif isinstance(value, pa.RecordBatch):
        kind, table = "arrow", pa.Table.from_batches([value])
    elif isinstance(value, pa.Table):
        kind, table = "arrow", value
    if table is not None:
        meta = dict(table.schema.metadata or {})
        meta[_META_KEY] = json.dumps({"kind": kind, "block": block, "run_id": run_id}).encode()
        return kind, table.replace_schema_metadata(meta)
    try:
        return "json", json.dumps(value, default=_json_default, indent=1).encode()
    except (TypeError, ValueError) as exc:
        raise MageDbtError(
            f"block '{block}' returned a {type(value).__name__}, which cannot be stored as its "
            f"output: {exc}",
            hint="return a pandas DataFrame, a pyarrow Table or a JSON-serializable value",
        ) from None


def _from_pandas(frame: Any, block: str) -> Any:
    import pyarrow as pa

    try:
        return pa.Table.from_pandas(frame)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MageDbtError(
            f"block '{block}' returned a DataFrame that cannot be stored as Parquet: {first}",
            hint="give each column one type (e.g. df[col].astype(str)) and string column names",
        ) from None


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and type(value).__module__ == "numpy":
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def describe_file(path: Path, *, block: str, run_id: str) -> StoredOutput:
    if path.suffix == ".json":
        return StoredOutput(block=block, run_id=run_id, path=path, kind="json", rows=None)
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    info = json.loads((meta.metadata or {}).get(_META_KEY, b"{}") or b"{}")
    return StoredOutput(block=block, run_id=run_id, path=path, kind=info.get("kind", "arrow"),
                        rows=meta.num_rows)


def read_output(found: StoredOutput) -> Any:
    """The stored value, as the type the block returned (DataFrame, Series, Arrow table, JSON)."""
    if found.kind == "json":
        return json.loads(found.path.read_bytes())
    import pyarrow.parquet as pq

    table = pq.read_table(found.path)
    meta = dict(table.schema.metadata or {})
    meta.pop(_META_KEY, None)
    table = table.replace_schema_metadata(meta or None)
    if found.kind == "arrow":
        return table
    frame = table.to_pandas()
    if found.kind == "series":
        series = frame.iloc[:, 0]
        return series.rename(None) if series.name == "value" else series
    return frame


# -- runs, retention ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunInfo:
    pipeline: str
    run_id: str
    path: Path
    created_at: float
    execution_date: str | None = None


def run_info(folder: Path) -> RunInfo:
    created, execution_date = None, None
    marker = folder / RUN_FILE
    try:
        raw = json.loads(marker.read_text())
        created, execution_date = float(raw.get("created_at")), raw.get("execution_date")
    except (OSError, ValueError, TypeError):
        pass
    if created is None:
        created = folder.stat().st_mtime
    return RunInfo(pipeline=folder.parent.name, run_id=folder.name, path=folder,
                   created_at=created, execution_date=execution_date)


def list_runs(data_dir: Path, pipeline: str) -> list[RunInfo]:
    """Runs of `pipeline` with stored outputs, newest first."""
    folder = outputs_root(data_dir) / pipeline
    if not folder.is_dir():
        return []
    runs = [run_info(p) for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(runs, key=lambda r: r.created_at, reverse=True)


def find_output(data_dir: Path, pipeline: str, block: str, run_id: str | None = None) -> StoredOutput:
    """The output of `block` in run `run_id`, or in the newest run that stored one."""
    runs = list_runs(data_dir, pipeline)
    if run_id is not None:
        runs = [r for r in runs if r.run_id == run_id]
        if not runs:
            known = ", ".join(r.run_id for r in list_runs(data_dir, pipeline)[:5]) or "none"
            raise OutputNotFound(f"pipeline '{pipeline}' has no stored outputs of run '{run_id}'",
                                 hint=f"newest runs with outputs: {known}")
    for run in runs:
        found = OutputStore(data_dir, pipeline, run.run_id).find(block)
        if found is not None and found.run_id == run.run_id:
            return found
    where = f"run '{run_id}'" if run_id else "any stored run"
    stored = OutputStore(data_dir, pipeline, runs[0].run_id).blocks() if runs else []
    raise OutputNotFound(
        f"no stored output of block '{block}' of pipeline '{pipeline}' in {where}",
        hint=(f"blocks with outputs there: {', '.join(stored)}" if stored
              else f"run it first: mage-dbt run {pipeline} --execution-date YYYY-MM-DD"))


def prune_runs(data_dir: Path, retention_days: int, *, keep: Iterable[str] = (),
               now: float | None = None) -> list[Path]:
    """Delete run folders (all pipelines) created more than `retention_days` days ago (0: never)."""
    root = outputs_root(data_dir)
    if retention_days <= 0 or not root.is_dir():
        return []
    keep = set(keep)
    cutoff = (time.time() if now is None else now) - retention_days * 86400
    removed = []
    for pipeline_dir in root.iterdir():
        if not pipeline_dir.is_dir():
            continue
        for folder in pipeline_dir.iterdir():
            if not folder.is_dir() or folder.name in keep:
                continue
            if run_info(folder).created_at < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


def check_data_dir(data_dir: Path) -> None:
    """Before a run starts: the data folder and every folder in it take new files (FileSystemError).

    A run writes outputs, summaries, logs and dbt artifacts there; finding out half-way through
    would leave a flow run that did part of its work."""
    root = Path(data_dir)
    check_writable(root, also=DATA_DIR_NOTE)
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and not folder.is_symlink():
            check_writable(folder, also=DATA_DIR_NOTE)


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        error = FileSystemError.from_os_error(exc, folder, action="create the folder", also=DATA_DIR_NOTE)
        if error is None:
            raise
        raise error from exc


def _atomic_write(path: Path, data: bytes) -> None:
    write_atomically(path, data, also=DATA_DIR_NOTE)
