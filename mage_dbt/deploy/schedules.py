"""Pipeline schedules as Prefect sees them: conversion to Prefect schedules, and a one-line description.

A pipeline file declares `schedule:` and `full_refresh_schedule:` (`ScheduleSpec`: a cron expression
or an interval in seconds, an IANA timezone, active or not), checked when the file is read
(`mage_dbt.pipelines.schedules`). This module turns them into Prefect `Schedule` objects for
deployments and describes them for the CLI.
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
