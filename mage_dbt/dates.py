"""All time handling of mage_dbt: execution dates, intervals and the date values dbt sees.

This module owns three things, in the spirit of SQLMesh's explicit date helpers:

* parsing a user's execution date (string, `date` or `datetime`) once into a timezone-aware
  `datetime` (`parse_execution_date`);
* intervals: `Interval` is a half-open `[start, end)` pair of aware datetimes; `interval_for` finds
  the hour / day / week / month interval an execution date falls into, `intervals_between` lists
  the intervals of a backfill range;
* `dbt_vars`: the `execution_date` / `interval_*` values that reach dbt, SQL and Python blocks.

Timezones come from the stdlib `zoneinfo` database; there is no hand-written offset arithmetic.
Day, week and month boundaries are computed on the local wall clock (a day starts at local midnight,
so a day across a DST change is 23 or 25 hours long); hours are computed on absolute time (so such a
day has 23 or 25 hourly intervals and none is skipped or repeated).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mage_dbt.errors import BackfillError, ConfigError

__all__ = [
    "UNITS",
    "Interval",
    "IntervalUnit",
    "dbt_vars",
    "get_timezone",
    "interval_for",
    "intervals_between",
    "parse_execution_date",
]

IntervalUnit = Literal["hour", "day", "week", "month"]
UNITS: tuple[str, ...] = ("hour", "day", "week", "month")

_DATE_HINT = "use YYYY-MM-DD or an ISO timestamp like 2024-02-01T00:00:00+00:00"


def get_timezone(name: str) -> ZoneInfo:
    """The IANA timezone `name`; ConfigError naming it when it does not exist."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigError(
            f"unknown timezone {name!r}",
            hint="use an IANA timezone name like UTC, Europe/Berlin or America/New_York",
        ) from None


def parse_execution_date(value: str | date | datetime, tz: str = "UTC") -> datetime:
    """Parse an execution date into a timezone-aware datetime.

    Accepts 'YYYY-MM-DD' (local midnight in `tz`), ISO 8601 timestamps with or without an offset
    ('Z' included), `date` and `datetime` objects. Naive values are interpreted in `tz`; aware values
    keep their own offset.
    """
    zone = get_timezone(tz)
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ConfigError(
                f"execution date {value!r} is not a date", hint=_DATE_HINT
            ) from None
    else:
        raise ConfigError(
            f"execution date {value!r} is a {type(value).__name__}, not a date", hint=_DATE_HINT
        )
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return _localize(parsed.replace(tzinfo=None), zone)
    return parsed


@dataclass(frozen=True, eq=False)
class Interval:
    """A half-open time interval: `start` inclusive, `end` exclusive, both timezone-aware.

    Python compares and subtracts two datetimes sharing a tzinfo on their wall-clock values, which
    is wrong across DST changes; every comparison here goes through UTC instants instead.
    """

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        for label, value in (("start", self.start), ("end", self.end)):
            if value.tzinfo is None or value.utcoffset() is None:
                raise ConfigError(
                    f"interval {label} {value.isoformat()} has no timezone",
                    hint="build intervals with parse_execution_date() or interval_for()",
                )
        if _utc(self.end) <= _utc(self.start):
            raise ConfigError(
                f"interval end {self.end.isoformat()} is not after its start "
                f"{self.start.isoformat()}"
            )

    @property
    def duration(self) -> timedelta:
        """Elapsed (absolute) time, e.g. 23 hours for a spring-forward day."""
        return _utc(self.end) - _utc(self.start)

    def __contains__(self, moment: datetime) -> bool:
        return _utc(self.start) <= _utc(moment) < _utc(self.end)

    def _key(self) -> tuple[datetime, datetime, str]:
        return (_utc(self.start), _utc(self.end), str(self.start.tzinfo))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Interval) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def interval_for(
    execution_date: str | date | datetime, unit: str = "day", tz: str | None = None
) -> Interval:
    """The `unit` interval that contains `execution_date`.

    With `tz`, the interval is computed in that timezone (naive values are read there, aware ones
    converted). Without it, naive values are UTC and aware ones keep their own timezone.
    Weeks are ISO weeks (Monday to Monday), months are calendar months.
    """
    _check_unit(unit)
    moment = parse_execution_date(execution_date, tz or "UTC")
    if tz is not None:
        moment = moment.astimezone(get_timezone(tz))
    start = _floor(moment, unit)
    return Interval(start, _next_start(start, unit))


def intervals_between(
    start: str | date | datetime,
    end: str | date | datetime,
    unit: str = "day",
    tz: str = "UTC",
    *,
    limit: int | None = None,
) -> list[Interval]:
    """Every `unit` interval whose start lies in `[start, end]` — both ends inclusive.

    `2024-01-01..2024-01-31` daily is 31 intervals, the last one ending 2024-02-01. Both ends are
    read in `tz` and must be interval starts there (local midnight for days, a Monday for weeks,
    the 1st for months, a whole hour for hours). More than `limit` intervals is a BackfillError
    raised before the list is built.
    """
    _check_unit(unit)
    zone = get_timezone(tz)
    first = parse_execution_date(start, tz).astimezone(zone)
    last = parse_execution_date(end, tz).astimezone(zone)
    if _utc(last) < _utc(first):
        raise BackfillError(
            f"backfill end {_show(last, unit)} is before its start {_show(first, unit)}",
            hint=f"swap them: start {_show(last, unit)}, end {_show(first, unit)}",
        )
    for label, value in (("start", first), ("end", last)):
        aligned = _floor(value, unit)
        if _utc(aligned) != _utc(value):
            article = "an" if unit == "hour" else "a"
            weekday = f" (a {value:%A})" if unit == "week" else ""
            raise BackfillError(
                f"backfill {label} {_show(value, unit)}{weekday} is not the start of {article} "
                f"{unit}: the range does not divide into whole {unit} intervals",
                hint=f"{_ALIGN_RULE[unit]} in {tz}; use {_show(aligned, unit)}",
            )
    if limit is not None and _count(first, last, unit) > limit:
        raise BackfillError(
            f"backfill {_show(first, unit)}..{_show(last, unit)} has "
            f"{_count(first, last, unit)} {unit} intervals, more than the maximum of {limit}",
            hint="narrow the range or use a longer interval",
        )
    intervals: list[Interval] = []
    current = first
    while _utc(current) <= _utc(last):
        following = _next_start(current, unit)
        intervals.append(Interval(current, following))
        current = following
    return intervals


def dbt_vars(interval: Interval) -> dict[str, str]:
    """The date values passed to dbt (`var('execution_date')`), SQL templates and Python blocks.

    `execution_date` is the interval start's calendar date in the interval's own timezone.
    """
    start = interval.start.isoformat()
    return {
        "execution_date": interval.start.date().isoformat(),
        "execution_ts": start,
        "interval_start": start,
        "interval_end": interval.end.isoformat(),
    }


# --- helpers -------------------------------------------------------------------------------------

_ALIGN_RULE = {
    "hour": "hour intervals start on the hour",
    "day": "day intervals start at midnight",
    "week": "week intervals start on Monday at midnight",
    "month": "month intervals start on the 1st at midnight",
}


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise ConfigError(
            f"unknown interval {unit!r}", hint=f"use one of {', '.join(UNITS)}"
        )


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc)


def _localize(naive: datetime, zone: tzinfo) -> datetime:
    """Attach `zone` to a wall-clock time.

    A time inside a spring-forward gap moves forward past the gap (02:30 -> 03:30 in Berlin); an
    ambiguous fall-back time takes its first occurrence (PEP 495 fold=0). Going through UTC makes
    zoneinfo pick the real offset of the resulting instant.
    """
    return naive.replace(tzinfo=zone, fold=0).astimezone(timezone.utc).astimezone(zone)


def _floor(moment: datetime, unit: str) -> datetime:
    """The start of the `unit` interval containing `moment`, in `moment`'s timezone."""
    zone = moment.tzinfo
    assert zone is not None
    if unit == "hour":
        # absolute arithmetic: the repeated fall-back hour is two distinct hourly intervals
        into_hour = timedelta(
            minutes=moment.minute, seconds=moment.second, microseconds=moment.microsecond
        )
        return (moment.astimezone(timezone.utc) - into_hour).astimezone(zone)
    day = moment.date()
    if unit == "week":
        day -= timedelta(days=day.weekday())
    elif unit == "month":
        day = day.replace(day=1)
    return _localize(datetime(day.year, day.month, day.day), zone)


def _next_start(start: datetime, unit: str) -> datetime:
    """The start of the interval after the one starting at `start`."""
    zone = start.tzinfo
    assert zone is not None
    if unit == "hour":
        return (start.astimezone(timezone.utc) + timedelta(hours=1)).astimezone(zone)
    day = start.date()
    if unit == "day":
        day += timedelta(days=1)
    elif unit == "week":
        day += timedelta(days=7)
    else:
        day = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return _localize(datetime(day.year, day.month, day.day), zone)


def _count(first: datetime, last: datetime, unit: str) -> int:
    """How many intervals `[first, last]` holds (both aligned), without building them."""
    if unit == "month":
        return (last.year - first.year) * 12 + last.month - first.month + 1
    step = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7)}[unit]
    # DST shifts days and weeks by at most a few hours: rounding gives the wall-clock count
    return round((_utc(last) - _utc(first)) / step) + 1


def _show(moment: datetime, unit: str) -> str:
    """A value the user can paste back: a date for day-based units at midnight, else ISO 8601."""
    if unit != "hour" and moment.time() == datetime.min.time():
        return moment.date().isoformat()
    return moment.isoformat()
