"""Schedule values of a pipeline file, checked the way Prefect will check them.

A pipeline file declares `schedule:` and `full_refresh_schedule:` (`ScheduleSpec` in
`mage_dbt.pipelines.spec`). A bad cron expression or timezone fails when the file is read, naming
file and line, before anything is registered; turning a spec into a Prefect `Schedule` is
`mage_dbt.deploy.schedules`.
"""

from __future__ import annotations

CRON_HINT = "five fields: minute hour day-of-month month day-of-week, e.g. '0 6 * * *' or '0 3 * * sun'"


def check_cron(value: str) -> str:
    """`value` if Prefect accepts it as a cron expression; ValueError saying what a cron looks like."""
    from prefect._internal.schemas.validators import validate_cron_string  # local: prefect is slow to import

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
