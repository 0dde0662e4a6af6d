"""Pipeline schedules as Prefect sees them: validation, conversion, and a one-line description.

A pipeline file declares `schedule:` and `full_refresh_schedule:` (`ScheduleSpec`: a cron expression
or an interval in seconds, an IANA timezone, active or not). This module owns checking those values
the way Prefect will (so a bad cron or timezone fails when the file is read, naming file and line,
before anything is registered) and turning them into Prefect `Schedule` objects for deployments.
Interval schedules are anchored at local midnight of 2020-01-01 in their timezone, so re-deploying
yields the same schedule instead of one anchored at "now".
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect.schedules import Schedule

    from mage_dbt.pipelines.spec import ScheduleSpec

ANCHOR = datetime(2020, 1, 1)
CRON_HINT = "five fields: minute hour day-of-month month day-of-week, e.g. '0 6 * * *' or '0 3 * * sun'"


def check_cron(value: str) -> str:
    """`value` if Prefect accepts it as a cron expression; ValueError saying what a cron looks like."""
    from prefect._internal.schemas.validators import validate_cron_string

    try:
        return validate_cron_string(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a valid cron expression ({CRON_HINT})") from None


def check_timezone(value: str) -> str:
    """`value` if it is an IANA timezone name known to both zoneinfo and Prefect."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"unknown timezone {value!r} (use an IANA name like UTC, Europe/Berlin or America/New_York)"
        ) from None
    return value


def check_kind(cron: str | None, interval_seconds: int | None) -> None:
    """A schedule has exactly one of cron / interval_seconds."""
    if (cron is None) == (interval_seconds is None):
        raise ValueError("a schedule needs exactly one of 'cron' or 'interval_seconds'")


def to_prefect(spec: "ScheduleSpec", parameters: dict | None = None) -> "Schedule":
    """The Prefect schedule for `spec` (validated again by Prefect's own models)."""
    from zoneinfo import ZoneInfo

    from prefect.schedules import Cron, Interval

    if spec.cron is not None:
        return Cron(spec.cron, timezone=spec.timezone, active=spec.active, parameters=parameters or {})
    assert spec.interval_seconds is not None
    anchor = ANCHOR.replace(tzinfo=ZoneInfo(spec.timezone))
    return Interval(
        timedelta(seconds=spec.interval_seconds), anchor, timezone=spec.timezone,
        active=spec.active, parameters=parameters or {},
    )


def describe(spec: "ScheduleSpec | None") -> str:
    """How the CLI shows a schedule: `cron '0 6 * * *' Europe/Berlin`, `every 3600s UTC`, `none`."""
    if spec is None:
        return "no schedule"
    what = f"cron '{spec.cron}'" if spec.cron is not None else f"every {spec.interval_seconds}s"
    return f"{what} {spec.timezone}" + ("" if spec.active else " (inactive)")
