"""Execution dates, intervals and dbt vars: DST days, month ends, alignment, bad input."""

from __future__ import annotations

import pickle
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from mage_dbt.dates import (
    Interval,
    dbt_vars,
    interval_for,
    intervals_between,
    parse_execution_date,
)
from mage_dbt.errors import BackfillError, ConfigError

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
UTC = timezone.utc


# --- parse_execution_date ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "tz", "expected"),
    [
        ("2024-02-01", "UTC", datetime(2024, 2, 1, tzinfo=UTC)),
        (" 2024-02-01 ", "UTC", datetime(2024, 2, 1, tzinfo=UTC)),
        ("2024-02-01", "Europe/Berlin", datetime(2024, 1, 31, 23, tzinfo=UTC)),
        ("2024-02-01T06:30:00", "America/New_York", datetime(2024, 2, 1, 11, 30, tzinfo=UTC)),
        ("2024-02-01T06:30:00+01:00", "America/New_York", datetime(2024, 2, 1, 5, 30, tzinfo=UTC)),
        ("2024-02-01T00:00:00Z", "Europe/Berlin", datetime(2024, 2, 1, tzinfo=UTC)),
        (date(2024, 7, 1), "Europe/Berlin", datetime(2024, 6, 30, 22, tzinfo=UTC)),
        (datetime(2024, 7, 1, 12), "UTC", datetime(2024, 7, 1, 12, tzinfo=UTC)),
        (datetime(2024, 7, 1, 12, tzinfo=NEW_YORK), "Europe/Berlin", datetime(2024, 7, 1, 16, tzinfo=UTC)),
    ],
)
def test_parse_accepts_dates_timestamps_and_objects(value, tz, expected):
    parsed = parse_execution_date(value, tz)
    assert parsed.tzinfo is not None and parsed.utcoffset() is not None
    assert parsed == expected


def test_parse_naive_values_are_local_wall_clock():
    parsed = parse_execution_date("2024-07-01", "Europe/Berlin")
    assert parsed.tzinfo == BERLIN
    assert parsed.isoformat() == "2024-07-01T00:00:00+02:00"


def test_parse_aware_values_keep_their_offset():
    assert parse_execution_date("2024-02-01T06:30:00-05:00").isoformat() == "2024-02-01T06:30:00-05:00"


def test_parse_time_in_spring_forward_gap_moves_past_the_gap():
    assert parse_execution_date("2024-03-31T02:30", "Europe/Berlin").isoformat() == (
        "2024-03-31T03:30:00+02:00"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "yesterdayish",
            "execution date 'yesterdayish' is not a date — use YYYY-MM-DD or an ISO timestamp "
            "like 2024-02-01T00:00:00+00:00",
        ),
        (
            "2024-02-30",
            "execution date '2024-02-30' is not a date — use YYYY-MM-DD or an ISO timestamp "
            "like 2024-02-01T00:00:00+00:00",
        ),
        (
            "",
            "execution date '' is not a date — use YYYY-MM-DD or an ISO timestamp "
            "like 2024-02-01T00:00:00+00:00",
        ),
        (
            20240201,
            "execution date 20240201 is a int, not a date — use YYYY-MM-DD or an ISO timestamp "
            "like 2024-02-01T00:00:00+00:00",
        ),
    ],
)
def test_parse_rejects_non_dates_with_an_example(value, message):
    with pytest.raises(ConfigError) as caught:
        parse_execution_date(value)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_parse_rejects_unknown_timezone_naming_it():
    with pytest.raises(ConfigError) as caught:
        parse_execution_date("2024-02-01", "Mars/Olympus_Mons")
    assert str(caught.value) == (
        "unknown timezone 'Mars/Olympus_Mons' — use an IANA timezone name like UTC, "
        "Europe/Berlin or America/New_York"
    )


def test_errors_pickle_with_their_message():
    with pytest.raises(ConfigError) as caught:
        parse_execution_date("nope")
    clone = pickle.loads(pickle.dumps(caught.value))
    assert type(clone) is ConfigError and str(clone) == str(caught.value)


# --- interval_for --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "unit", "start", "end"),
    [
        ("2024-02-14T13:45", "hour", "2024-02-14T13:00:00+00:00", "2024-02-14T14:00:00+00:00"),
        ("2024-02-14T13:45", "day", "2024-02-14T00:00:00+00:00", "2024-02-15T00:00:00+00:00"),
        ("2024-02-14T13:45", "week", "2024-02-12T00:00:00+00:00", "2024-02-19T00:00:00+00:00"),
        ("2024-02-14T13:45", "month", "2024-02-01T00:00:00+00:00", "2024-03-01T00:00:00+00:00"),
        ("2024-12-31", "month", "2024-12-01T00:00:00+00:00", "2025-01-01T00:00:00+00:00"),
        ("2025-01-01", "week", "2024-12-30T00:00:00+00:00", "2025-01-06T00:00:00+00:00"),
    ],
)
def test_interval_for_units(moment, unit, start, end):
    interval = interval_for(moment, unit)
    assert (interval.start.isoformat(), interval.end.isoformat()) == (start, end)
    assert parse_execution_date(moment) in interval


def test_interval_for_keeps_the_execution_dates_timezone():
    interval = interval_for("2024-10-27T12:00:00+01:00", "day")
    assert interval.start.isoformat() == "2024-10-27T00:00:00+01:00"
    berlin = interval_for("2024-10-27T12:00", "day", "Europe/Berlin")
    assert berlin.start.isoformat() == "2024-10-27T00:00:00+02:00"
    assert berlin.end.isoformat() == "2024-10-28T00:00:00+01:00"
    assert berlin.duration == timedelta(hours=25)
    converted = interval_for("2024-10-27T23:30:00+00:00", "day", "Europe/Berlin")
    assert converted.start.isoformat() == "2024-10-28T00:00:00+01:00"


def test_interval_for_rejects_unknown_unit():
    with pytest.raises(ConfigError, match="unknown interval 'fortnight' — use one of hour, day, week, month"):
        interval_for("2024-01-01", "fortnight")


def test_interval_requires_aware_ordered_datetimes():
    with pytest.raises(ConfigError, match="has no timezone"):
        Interval(datetime(2024, 1, 1), datetime(2024, 1, 2, tzinfo=UTC))
    with pytest.raises(ConfigError, match="is not after its start"):
        Interval(datetime(2024, 1, 2, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC))


def test_interval_equality_uses_instants_not_wall_clock():
    hours = intervals_between(
        "2024-10-27T02:00:00+02:00", "2024-10-27T02:00:00+01:00", "hour", "Europe/Berlin"
    )
    assert len(hours) == 2
    assert hours[0] != hours[1] and len(set(hours)) == 2
    assert hours[0].end == hours[1].start  # same instant, different fold


# --- intervals_between ---------------------------------------------------------------------------


def test_january_daily_is_31_intervals_both_ends_inclusive():
    days = intervals_between("2024-01-01", "2024-01-31", "day")
    assert len(days) == 31
    assert days[0].start.isoformat() == "2024-01-01T00:00:00+00:00"
    assert days[-1].start.isoformat() == "2024-01-31T00:00:00+00:00"
    assert days[-1].end.isoformat() == "2024-02-01T00:00:00+00:00"
    assert all(a.end == b.start for a, b in zip(days, days[1:]))


def test_single_interval_when_start_equals_end():
    assert len(intervals_between("2024-01-01", "2024-01-01", "month")) == 1


@pytest.mark.parametrize(
    ("tz", "day", "hours", "offsets"),
    [
        ("Europe/Berlin", "2024-03-31", 23, ("+01:00", "+02:00")),
        ("Europe/Berlin", "2024-10-27", 25, ("+02:00", "+01:00")),
        ("America/New_York", "2024-03-10", 23, ("-05:00", "-04:00")),
        ("America/New_York", "2024-11-03", 25, ("-04:00", "-05:00")),
    ],
)
def test_dst_days_start_at_local_midnight_and_last_23_or_25_hours(tz, day, hours, offsets):
    previous = (date.fromisoformat(day) - timedelta(days=1)).isoformat()
    following = (date.fromisoformat(day) + timedelta(days=1)).isoformat()
    days = intervals_between(previous, following, "day", tz)
    assert [d.duration for d in days] == [timedelta(hours=24), timedelta(hours=hours), timedelta(hours=24)]
    dst_day = days[1]
    assert dst_day.start.isoformat() == f"{day}T00:00:00{offsets[0]}"
    assert dst_day.end.isoformat() == f"{following}T00:00:00{offsets[1]}"
    assert all(d.start.time() == datetime.min.time() for d in days)

    hourly = intervals_between(dst_day.start, dst_day.end - timedelta(hours=1), "hour", tz)
    assert len(hourly) == hours
    assert all(h.duration == timedelta(hours=1) for h in hourly)
    assert all(a.end == b.start for a, b in zip(hourly, hourly[1:]))
    assert hourly[0].start == dst_day.start and hourly[-1].end == dst_day.end
    assert len({h.start.astimezone(UTC) for h in hourly}) == hours


def test_hourly_across_fall_back_repeats_the_local_hour_with_both_offsets():
    hourly = intervals_between("2024-10-27T01:00", "2024-10-27T03:00", "hour", "Europe/Berlin")
    assert [h.start.isoformat() for h in hourly] == [
        "2024-10-27T01:00:00+02:00",
        "2024-10-27T02:00:00+02:00",
        "2024-10-27T02:00:00+01:00",
        "2024-10-27T03:00:00+01:00",
    ]


def test_hourly_across_spring_forward_skips_the_missing_hour():
    hourly = intervals_between("2024-03-10T00:00", "2024-03-10T04:00", "hour", "America/New_York")
    assert [h.start.strftime("%H:%M%z") for h in hourly] == [
        "00:00-0500", "01:00-0500", "03:00-0400", "04:00-0400",
    ]


def test_month_intervals_are_calendar_months_through_leap_february():
    months = intervals_between("2023-11-01", "2024-03-01", "month")
    assert [(m.start.date().isoformat(), m.end.date().isoformat()) for m in months] == [
        ("2023-11-01", "2023-12-01"),
        ("2023-12-01", "2024-01-01"),
        ("2024-01-01", "2024-02-01"),
        ("2024-02-01", "2024-03-01"),
        ("2024-03-01", "2024-04-01"),
    ]
    assert months[3].duration == timedelta(days=29)
    assert months[0].duration == timedelta(days=30)


def test_month_end_days_roll_into_the_next_month():
    days = intervals_between("2024-01-31", "2024-03-01", "day")
    assert [d.start.date().isoformat() for d in days[:2]] == ["2024-01-31", "2024-02-01"]
    assert date(2024, 2, 29) in [d.start.date() for d in days]
    assert len(days) == 31  # 31 Jan + 29 Feb days + 1 Mar
    assert interval_for("2024-02-29", "month").end.date() == date(2024, 3, 1)


def test_month_intervals_in_a_dst_zone_start_at_local_midnight():
    months = intervals_between("2024-03-01", "2024-11-01", "month", "Europe/Berlin")
    assert all(m.start.strftime("%d %H:%M") == "01 00:00" for m in months)
    assert months[0].duration == timedelta(days=31, hours=-1)
    assert months[7].duration == timedelta(days=31, hours=1)


def test_weeks_are_iso_weeks_starting_monday():
    weeks = intervals_between("2024-01-01", "2024-01-29", "week")
    assert len(weeks) == 5
    assert all(w.start.weekday() == 0 and w.duration == timedelta(days=7) for w in weeks)
    across_dst = intervals_between("2024-03-25", "2024-03-25", "week", "Europe/Berlin")[0]
    assert across_dst.duration == timedelta(days=7, hours=-1)


def test_end_before_start_is_a_backfill_error():
    with pytest.raises(BackfillError) as caught:
        intervals_between("2024-02-01", "2024-01-01", "day")
    assert str(caught.value) == (
        "backfill end 2024-01-01 is before its start 2024-02-01 — swap them: start 2024-01-01, "
        "end 2024-02-01"
    )


@pytest.mark.parametrize(
    ("start", "end", "unit", "tz", "message"),
    [
        (
            "2024-01-03", "2024-01-31", "week", "UTC",
            "backfill start 2024-01-03 (a Wednesday) is not the start of a week: the range does "
            "not divide into whole week intervals — week intervals start on Monday at midnight in "
            "UTC; use 2024-01-01",
        ),
        (
            "2024-01-01", "2024-01-31", "week", "UTC",
            "backfill end 2024-01-31 (a Wednesday) is not the start of a week: the range does not "
            "divide into whole week intervals — week intervals start on Monday at midnight in UTC; "
            "use 2024-01-29",
        ),
        (
            "2024-01-15", "2024-03-01", "month", "UTC",
            "backfill start 2024-01-15 is not the start of a month: the range does not divide into "
            "whole month intervals — month intervals start on the 1st at midnight in UTC; use "
            "2024-01-01",
        ),
        (
            "2024-01-01T00:30", "2024-01-02", "hour", "UTC",
            "backfill start 2024-01-01T00:30:00+00:00 is not the start of an hour: the range does "
            "not divide into whole hour intervals — hour intervals start on the hour in UTC; use "
            "2024-01-01T00:00:00+00:00",
        ),
        (
            "2024-01-01T00:00:00+00:00", "2024-01-05", "day", "Europe/Berlin",
            "backfill start 2024-01-01T01:00:00+01:00 is not the start of a day: the range does not "
            "divide into whole day intervals — day intervals start at midnight in Europe/Berlin; "
            "use 2024-01-01",
        ),
    ],
)
def test_unaligned_range_says_what_to_use(start, end, unit, tz, message):
    with pytest.raises(BackfillError) as caught:
        intervals_between(start, end, unit, tz)
    assert str(caught.value) == message


def test_limit_is_checked_before_building_the_list():
    with pytest.raises(BackfillError) as caught:
        intervals_between("2000-01-01", "2024-01-01", "hour", limit=1000)
    assert str(caught.value) == (
        "backfill 2000-01-01T00:00:00+00:00..2024-01-01T00:00:00+00:00 has 210385 hour intervals, "
        "more than the maximum of 1000 — narrow the range or use a longer interval"
    )
    assert len(intervals_between("2024-01-01", "2024-01-31", "day", limit=31)) == 31
    with pytest.raises(BackfillError, match="has 31 day intervals, more than the maximum of 30"):
        intervals_between("2024-01-01", "2024-01-31", "day", limit=30)


def test_limit_counts_days_exactly_across_dst():
    assert len(intervals_between("2024-03-30", "2024-04-01", "day", "Europe/Berlin", limit=3)) == 3


def test_unknown_timezone_in_intervals_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown timezone 'Europe/Atlantis'"):
        intervals_between("2024-01-01", "2024-01-02", "day", "Europe/Atlantis")


# --- dbt_vars ------------------------------------------------------------------------------------


def test_dbt_vars_use_the_interval_start_in_its_timezone():
    interval = interval_for("2024-10-27", "day", "Europe/Berlin")
    assert dbt_vars(interval) == {
        "execution_date": "2024-10-27",
        "execution_ts": "2024-10-27T00:00:00+02:00",
        "interval_start": "2024-10-27T00:00:00+02:00",
        "interval_end": "2024-10-28T00:00:00+01:00",
    }


def test_dbt_vars_execution_date_is_local_not_utc():
    # Berlin midnight is 23:00 UTC the previous day; dbt must still see the local date
    interval = intervals_between("2024-02-01", "2024-02-01", "day", "Europe/Berlin")[0]
    assert dbt_vars(interval)["execution_date"] == "2024-02-01"
    assert all(isinstance(v, str) for v in dbt_vars(interval).values())


def test_dbt_vars_round_trip_through_parse():
    interval = interval_for("2024-03-31T05:00", "hour", "Europe/Berlin")
    values = dbt_vars(interval)
    assert parse_execution_date(values["interval_start"]) == interval.start
    assert parse_execution_date(values["interval_end"]) == interval.end


# --- properties over many zones and dates (no hypothesis installed: a fixed exhaustive sweep) -----


@pytest.mark.parametrize(
    "tz",
    ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "America/Santiago"],
)
@pytest.mark.parametrize("unit", ["day", "week", "month"])
def test_intervals_tile_two_years_without_gaps(tz, unit):
    start = interval_for("2023-01-01", unit, tz).start
    end = interval_for("2024-12-31", unit, tz).start
    intervals = intervals_between(start, end, unit, tz)
    assert all(a.end == b.start for a, b in zip(intervals, intervals[1:]))
    assert all(interval_for(i.start, unit, tz) == i for i in intervals)
    assert all(i.duration > timedelta(0) for i in intervals)
    zone = ZoneInfo(tz)
    midnight_gaps = {date(2023, 9, 3), date(2024, 9, 8)} if tz == "America/Santiago" else set()
    assert all(i.start.astimezone(zone).hour == 0 for i in intervals if i.start.date() not in midnight_gaps)
    expected = {"day": 731, "week": 106, "month": 24}[unit]
    assert len(intervals) == expected


def test_day_whose_midnight_does_not_exist_starts_when_the_clock_resumes():
    # Chile springs forward at 24:00 -> 01:00: 2024-09-08 has no local midnight
    days = intervals_between("2024-09-07", "2024-09-09", "day", "America/Santiago")
    assert [d.start.isoformat() for d in days] == [
        "2024-09-07T00:00:00-04:00",
        "2024-09-08T01:00:00-03:00",
        "2024-09-09T00:00:00-03:00",
    ]
    assert [d.duration for d in days] == [timedelta(hours=24), timedelta(hours=23), timedelta(hours=24)]
    assert dbt_vars(days[1])["execution_date"] == "2024-09-08"


def test_intervals_pickle_for_worker_processes():
    interval = interval_for("2024-10-27T02:30:00+01:00", "hour", "Europe/Berlin")
    assert interval.start.tzinfo == BERLIN and interval.start.fold == 1
    clone = pickle.loads(pickle.dumps(interval))
    assert clone == interval and dbt_vars(clone) == dbt_vars(interval)
    assert clone.start.isoformat() == "2024-10-27T02:00:00+01:00"
    assert clone.end.isoformat() == "2024-10-27T03:00:00+01:00"
