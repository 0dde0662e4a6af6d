"""Backfill plans: which intervals a backfill covers, its id, and the pipeline it was planned for.

A plan is made once, before anything runs, and recorded under `<data_dir>/backfills/<id>.json`
(written atomically). Resuming reads the plan back instead of recomputing it, so a resume covers
exactly the intervals of the original request, in the same timezone.

A range is checked and sized before any interval is built (`interval_window`): counting is
arithmetic and the first and last intervals are found by stepping from the ends, so a dry run of a
century of hours answers at once. More than `max_intervals()` intervals need `yes`; more than
`CEILING_INTERVALS` are refused even then (a backfill makes one flow run per interval: split it).

The plan carries a *pipeline fingerprint*: the hash of the pipeline file and the set of blocks the
run selects. Resuming a backfill whose fingerprint changed would mix two pipeline definitions in
one table history, so it is refused (naming what changed) unless `force` is given. Changes to dbt
model code are allowed on purpose: fixing the model that failed is the usual reason to resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

from mage_dbt.backfill.microbatch_phase import check_window, plan_split
from mage_dbt.backfill.safety import check_concurrency
from mage_dbt.dates import Interval, _count, get_timezone, interval_for, intervals_between, parse_execution_date
from mage_dbt.errors import BackfillError
from mage_dbt.pipelines.pipeline import Pipeline, load_pipeline, pipeline_file
from mage_dbt.settings import ProjectSettings

MAX_INTERVALS_ENV = "MAGE_DBT_BACKFILL_MAX_INTERVALS"
DEFAULT_MAX_INTERVALS = 366
# One flow run (and a line in the plan record) per interval: beyond this a backfill is several backfills.
CEILING_INTERVALS = 100_000
TAG_PREFIX = "backfill:"


def backfill_tag(backfill_id: str) -> str:
    """The Prefect tag every flow run of backfill `backfill_id` carries."""
    return f"{TAG_PREFIX}{backfill_id}"


def max_intervals(explicit: int | None = None) -> int:
    """How many intervals a backfill may have without `--yes`: option, else env, else 366."""
    if explicit is not None:
        return explicit
    raw = os.environ.get(MAX_INTERVALS_ENV)
    if not raw:
        return DEFAULT_MAX_INTERVALS
    try:
        value = int(raw)
    except ValueError:
        raise BackfillError(
            f"{MAX_INTERVALS_ENV}={raw!r} is not a whole number", hint=f"e.g. {MAX_INTERVALS_ENV}=1000"
        ) from None
    if value < 1:
        raise BackfillError(f"{MAX_INTERVALS_ENV}={value} must be at least 1")
    return value


@dataclass(frozen=True)
class PipelineFingerprint:
    """What a backfill's pipeline looked like when the backfill was planned."""

    pipeline_file: str
    file_sha256: str
    blocks: tuple[str, ...]

    @classmethod
    def of(cls, settings: ProjectSettings, pipeline: Pipeline) -> "PipelineFingerprint":
        path = pipeline_file(settings, pipeline.name)
        return cls(
            pipeline_file=str(path.relative_to(settings.root)) if path.is_relative_to(settings.root) else str(path),
            file_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            blocks=tuple(sorted(pipeline.blocks)),
        )

    def changes_since(self, old: "PipelineFingerprint") -> list[str]:
        """Human-readable differences from `old` (empty when nothing relevant changed)."""
        changes = []
        if self.file_sha256 != old.file_sha256:
            changes.append(
                f"{old.pipeline_file} changed (sha256 {old.file_sha256[:12]} -> {self.file_sha256[:12]})"
            )
        added = sorted(set(self.blocks) - set(old.blocks))
        removed = sorted(set(old.blocks) - set(self.blocks))
        if added:
            changes.append(f"blocks added: {', '.join(added[:10])}{' ...' if len(added) > 10 else ''}")
        if removed:
            changes.append(f"blocks removed: {', '.join(removed[:10])}{' ...' if len(removed) > 10 else ''}")
        return changes


@dataclass(frozen=True)
class BackfillPlan:
    """One backfill request, resolved: the intervals to run and how to run them."""

    id: str
    pipeline: str
    start: str
    end: str
    interval: str
    timezone: str
    intervals: tuple[Interval, ...]
    fingerprint: PipelineFingerprint
    target: str | None = None
    select: tuple[str, ...] | None = None
    full_refresh_first: bool = False
    concurrency: int = 1
    # Microbatch models (+ date-free upstreams) run once over the range, then `interval_blocks`
    # per interval (mage_dbt.backfill.microbatch_phase); () and None: everything per interval.
    microbatch_blocks: tuple[str, ...] = ()
    interval_blocks: tuple[str, ...] | None = None
    work_pool: str | None = None  # intervals run as deployment runs in this Prefect work pool (pool_runs)
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def tag(self) -> str:
        return backfill_tag(self.id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "start": self.start,
            "end": self.end,
            "interval": self.interval,
            "timezone": self.timezone,
            "target": self.target,
            "select": list(self.select) if self.select else None,
            "full_refresh_first": self.full_refresh_first,
            "concurrency": self.concurrency,
            "microbatch_blocks": list(self.microbatch_blocks),
            "interval_blocks": None if self.interval_blocks is None else list(self.interval_blocks),
            "work_pool": self.work_pool,
            "created_at": self.created_at,
            "fingerprint": {
                "pipeline_file": self.fingerprint.pipeline_file,
                "file_sha256": self.fingerprint.file_sha256,
                "blocks": list(self.fingerprint.blocks),
            },
            "intervals": [[i.start.isoformat(), i.end.isoformat()] for i in self.intervals],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "BackfillPlan":
        zone = get_timezone(raw["timezone"])
        return cls(
            id=raw["id"],
            pipeline=raw["pipeline"],
            start=raw["start"],
            end=raw["end"],
            interval=raw["interval"],
            timezone=raw["timezone"],
            target=raw.get("target"),
            select=tuple(raw["select"]) if raw.get("select") else None,
            full_refresh_first=bool(raw.get("full_refresh_first")),
            concurrency=int(raw.get("concurrency") or 1),
            microbatch_blocks=tuple(raw.get("microbatch_blocks") or ()),
            interval_blocks=None if raw.get("interval_blocks") is None else tuple(raw["interval_blocks"]),
            work_pool=raw.get("work_pool"),
            created_at=raw["created_at"],
            fingerprint=PipelineFingerprint(
                pipeline_file=raw["fingerprint"]["pipeline_file"],
                file_sha256=raw["fingerprint"]["file_sha256"],
                blocks=tuple(raw["fingerprint"]["blocks"]),
            ),
            intervals=tuple(
                Interval(datetime.fromisoformat(s).astimezone(zone), datetime.fromisoformat(e).astimezone(zone))
                for s, e in raw["intervals"]
            ),
        )


def interval_key(interval: Interval | datetime) -> str:
    """A stable key for an interval: its start as a UTC ISO timestamp."""
    start = interval.start if isinstance(interval, Interval) else interval
    return start.astimezone(timezone.utc).isoformat()


def interval_label(interval: Interval, unit: str) -> str:
    """How users see an interval: its start date, or the full timestamp for hours."""
    if unit != "hour" and interval.start.time() == datetime.min.time():
        return interval.start.date().isoformat()
    return interval.start.isoformat(timespec="minutes")


@dataclass(frozen=True)
class IntervalWindow:
    """A checked backfill range, described without listing it: how many intervals, and the ends.

    Iterating yields every interval lazily; `head` and `tail` step from either end."""

    unit: str
    timezone: str
    count: int
    first: Interval
    last: Interval

    def __iter__(self) -> Iterator[Interval]:
        current = self.first
        for _ in range(self.count):
            yield current
            current = interval_for(current.end, self.unit, self.timezone)

    def head(self, n: int) -> list[Interval]:
        """The first `n` intervals (all of them when there are fewer)."""
        out: list[Interval] = []
        for interval in self:
            if len(out) == n:
                break
            out.append(interval)
        return out

    def tail(self, n: int) -> list[Interval]:
        """The last `n` intervals, in date order."""
        out = [self.last] if n > 0 else []
        while 0 < len(out) < min(n, self.count):
            before = out[-1].start.astimezone(timezone.utc) - timedelta(microseconds=1)
            out.append(interval_for(before, self.unit, self.timezone))
        return out[::-1]


def interval_window(start: str, end: str, unit: str, tz: str) -> IntervalWindow:
    """Check `start..end` (both inclusive interval starts) as `intervals_between` does, without listing it."""
    def utc(value: str) -> datetime:
        return parse_execution_date(value, tz).astimezone(timezone.utc)

    if utc(end) < utc(start):
        intervals_between(start, end, unit, tz)  # raises "end is before its start" (with the swap) at once
    # Each call lists one interval and raises what intervals_between would for that end: unknown unit,
    # a date that is not a date, an end that is not an interval start (named "start" or "end").
    first = intervals_between(start, start, unit, tz)[0]
    last = intervals_between(interval_for(end, unit, tz).start, end, unit, tz)[-1]
    return IntervalWindow(unit=unit, timezone=tz, count=_count(first.start, last.start, unit), first=first, last=last)


def size_refusal(window: IntervalWindow, *, yes: bool = False, limit: int | None = None) -> BackfillError | None:
    """Why a backfill of `window` may not run (too many intervals), or None when it may."""
    span = f"backfill {interval_label(window.first, window.unit)}..{interval_label(window.last, window.unit)}"
    if window.count > CEILING_INTERVALS:
        return BackfillError(
            f"{span} has {window.count} {window.unit} intervals, more than a backfill may have "
            f"({CEILING_INTERVALS}, one flow run each)",
            hint="split the range into several backfills, or use a longer --interval",
        )
    cap = max_intervals(limit)
    if window.count > cap and not yes:
        return BackfillError(
            f"{span} has {window.count} {window.unit} intervals, more than the maximum of {cap}",
            hint=f"pass --yes to run them all, raise the maximum with --max-intervals or {MAX_INTERVALS_ENV}, "
            "or narrow the range",
        )
    return None


@dataclass(frozen=True)
class BackfillRequest:
    """A backfill request whose pipeline, selection, range and concurrency are valid; not yet sized."""

    pipeline: Pipeline
    window: IntervalWindow


def check_request(
    settings: ProjectSettings,
    pipeline: str,
    start: str,
    end: str,
    *,
    interval: str | None = None,
    select: Sequence[str] | None = None,
    target: str | None = None,
    concurrency: int = 1,
    work_pool: str | None = None,
) -> BackfillRequest:
    """Everything `make_plan` checks except the number of intervals; builds no interval list."""
    if concurrency < 1:
        raise BackfillError(f"--concurrency {concurrency} must be at least 1")
    from mage_dbt.context import run_dbt_vars
    from mage_dbt.pipelines.spec import load_pipeline_spec

    spec = load_pipeline_spec(settings.flows_dir, pipeline)
    window = interval_window(start, end, interval or spec.interval, spec.timezone)
    # parsed with the first interval's dates: the manifest the intervals reuse (mage_dbt.dbt.parse_vars)
    resolved = load_pipeline(settings, pipeline, target=target, select=list(select) if select else None,
                             dbt_vars=run_dbt_vars(spec, window.first.start))
    check_concurrency(resolved, concurrency, work_pool=work_pool)
    return BackfillRequest(pipeline=resolved, window=window)


def make_plan(
    settings: ProjectSettings,
    pipeline: str,
    start: str,
    end: str,
    *,
    interval: str | None = None,
    select: Sequence[str] | None = None,
    target: str | None = None,
    full_refresh_first: bool = False,
    concurrency: int = 1,
    yes: bool = False,
    limit: int | None = None,
    work_pool: str | None = None,
) -> tuple[BackfillPlan, Pipeline]:
    """Validate a backfill request and resolve it into a plan; nothing is written or started."""
    request = check_request(settings, pipeline, start, end, interval=interval, select=select, target=target,
                            concurrency=concurrency, work_pool=work_pool)
    window, resolved = request.window, request.pipeline
    refusal = size_refusal(window, yes=yes, limit=limit)
    if refusal is not None:
        raise refusal
    unit = window.unit
    intervals = intervals_between(window.first.start, window.last.start, unit, window.timezone)
    first, last = intervals[0], intervals[-1]
    # Through a work pool every interval is a run of the deployment, each with its own event-time window.
    split = None if work_pool else plan_split(resolved)
    if split is not None and split.phase:
        check_window(resolved, first.start, last.end)
    plan = BackfillPlan(
        id=new_backfill_id(settings, resolved.name, first, last, unit),
        pipeline=resolved.name,
        start=interval_label(first, unit),
        end=interval_label(last, unit),
        interval=unit,
        timezone=window.timezone,
        intervals=tuple(intervals),
        fingerprint=PipelineFingerprint.of(settings, resolved),
        target=target,
        select=tuple(select) if select else None,
        full_refresh_first=full_refresh_first,
        concurrency=concurrency,
        microbatch_blocks=split.phase if split else (),
        interval_blocks=split.rest if split and split.phase else None,
        work_pool=work_pool,
    )
    return plan, resolved


def check_unchanged(settings: ProjectSettings, plan: BackfillPlan, *, force: bool = False) -> BackfillPlan:
    """Refuse to resume when the pipeline definition changed, unless `force`; returns the plan to run."""
    from mage_dbt.context import run_dbt_vars
    from mage_dbt.pipelines.spec import load_pipeline_spec

    first = run_dbt_vars(load_pipeline_spec(settings.flows_dir, plan.pipeline), plan.intervals[0].start) \
        if plan.intervals else None
    resolved = load_pipeline(
        settings, plan.pipeline, target=plan.target, select=list(plan.select) if plan.select else None,
        dbt_vars=first,
    )
    now = PipelineFingerprint.of(settings, resolved)
    changes = now.changes_since(plan.fingerprint)
    if changes and not force:
        raise BackfillError(
            f"pipeline '{plan.pipeline}' changed since backfill {plan.id} started: {'; '.join(changes)}",
            hint="resume anyway with --force (intervals already completed keep the old definition's "
            "results), or start a new backfill of the range",
        )
    return replace(plan, fingerprint=now) if changes else plan


def new_backfill_id(settings: ProjectSettings, pipeline: str, first: Interval, last: Interval, unit: str) -> str:
    stamp = "%Y%m%dT%H%M" if unit == "hour" else "%Y%m%d"
    while True:
        candidate = f"{pipeline}-{first.start:{stamp}}-{last.start:{stamp}}-{secrets.token_hex(2)}"
        if not record_path(settings, candidate).exists():
            return candidate


# --- the local record ----------------------------------------------------------------------------


def backfills_dir(settings: ProjectSettings) -> Path:
    return settings.data_dir / "backfills"


def record_path(settings: ProjectSettings, backfill_id: str) -> Path:
    return backfills_dir(settings) / f"{backfill_id}.json"


def save_plan(settings: ProjectSettings, plan: BackfillPlan, *, parent_runs: Sequence[str] | None = None) -> Path:
    """Write the plan record atomically (temp file + rename): readers never see half a file.

    Without `parent_runs`, the parent flow runs already recorded are kept."""
    path = record_path(settings, plan.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if parent_runs is None:
        parent_runs = json.loads(path.read_text()).get("parent_flow_runs", []) if path.is_file() else []
    payload = {**plan.to_dict(), "parent_flow_runs": list(parent_runs)}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
    return path


def add_parent_run(settings: ProjectSettings, plan: BackfillPlan, flow_run_id: str) -> None:
    """Remember one more parent flow run (attempt) of the backfill in its record."""
    runs = read_record(settings, plan.id).get("parent_flow_runs", [])
    save_plan(settings, plan, parent_runs=[*runs, flow_run_id])


def read_record(settings: ProjectSettings, backfill_id: str) -> dict[str, Any]:
    path = record_path(settings, backfill_id)
    if not path.is_file() or "/" in backfill_id:
        known = [p["id"] for p in list_records(settings)[:8]]
        raise BackfillError(
            f"unknown backfill id '{backfill_id}': no {path}",
            hint=f"known backfills: {', '.join(known)}" if known else "no backfill has been started in this project",
        )
    return json.loads(path.read_text())


def load_plan(settings: ProjectSettings, backfill_id: str) -> BackfillPlan:
    return BackfillPlan.from_dict(read_record(settings, backfill_id))


def list_records(settings: ProjectSettings) -> list[dict[str, Any]]:
    """Every recorded backfill of this project, newest first."""
    folder = backfills_dir(settings)
    records = []
    for path in folder.glob("*.json") if folder.is_dir() else ():
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(records, key=lambda r: r.get("created_at", ""), reverse=True)
