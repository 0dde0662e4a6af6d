"""`mage-dbt backfill` at the CLI level without running intervals: --dry-run interval lists and every
bad input of issue 6 (one-line error, exit 2, no traceback, nothing recorded, no flow run)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import cli
from tests.test_backfill_support import backfill_ids, write_pipeline

PIPELINE = "bfcheck"  # a name of its own, so its flow runs cannot be confused with other tests'


@pytest.fixture
def project(demo_project):
    write_pipeline(demo_project, PIPELINE, ["fct_daily_revenue"])
    write_pipeline(demo_project, "bfberlin", ["fct_daily_revenue"], interval="hour", timezone="Europe/Berlin")
    return demo_project


def _dry_run_rows(stdout: str) -> list[str]:
    """The execution_date column of the dry-run table."""
    return re.findall(r"│\s*\d+\s*│\s*(\S+)\s*│", stdout)


def _assert_rejected(result, *fragments: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def _no_flow_runs(name_prefix: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=name_prefix)),
                                     limit=10, sort=FlowRunSort.EXPECTED_START_TIME_ASC)
    assert not runs, [r.name for r in runs]


def test_dry_run_lists_intervals_both_ends_inclusive(project):
    january = cli(project, "backfill", PIPELINE, "--start", "2024-01-01", "--end", "2024-01-31", "--dry-run")
    assert january.returncode == 0, january.stderr[-3000:]
    days = _dry_run_rows(january.stdout)
    assert len(days) == 31 and days[0] == "2024-01-01" and days[-1] == "2024-01-31"
    assert "31 intervals" in january.stdout
    assert "2024-01-31T00:00:00+00:00 │ 2024-02-01T00:00:00+00:00" in january.stdout  # last interval ends Feb 1

    months = cli(project, "backfill", PIPELINE, "--start", "2024-01-01", "--end", "2024-12-01",
                 "--interval", "month", "--dry-run")
    assert months.returncode == 0, months.stderr[-3000:]
    assert _dry_run_rows(months.stdout) == [f"2024-{m:02d}-01" for m in range(1, 13)]
    assert "2024-02-01T00:00:00+00:00 │ 2024-03-01T00:00:00+00:00" in months.stdout  # calendar months

    # the pipeline's own interval and timezone: hours of the spring-forward day in Berlin (23 of them)
    hours = cli(project, "backfill", "bfberlin", "--start", "2024-03-31T00:00", "--end", "2024-03-31T23:00", "--dry-run")
    assert hours.returncode == 0, hours.stderr[-3000:]
    assert "23 intervals" in hours.stdout
    assert "2024-03-31T01:00:00+01:00 │ 2024-03-31T03:00:00+02:00" in hours.stdout

    # a limit lower than the range is fine with --yes
    many = cli(project, "backfill", PIPELINE, "--start", "2024-01-01", "--end", "2024-01-31", "--dry-run", "--yes",
               env={"MAGE_DBT_BACKFILL_MAX_INTERVALS": "10"})
    assert many.returncode == 0 and "31 intervals" in many.stdout, many.stderr[-3000:]
    assert backfill_ids(project) == []  # a dry run records nothing


@pytest.mark.parametrize(
    "args, env, fragments",
    [
        (["--start", "2024-01-31", "--end", "2024-01-01"], {}, ["end 2024-01-01 is before its start 2024-01-31", "swap"]),
        (["--start", "2024-01-15", "--end", "2024-03-01", "--interval", "month"], {},
         ["start 2024-01-15 is not the start of a month", "use 2024-01-01"]),
        (["--start", "2024-01-03", "--end", "2024-01-31", "--interval", "week"], {},
         ["(a Wednesday) is not the start of a week", "use 2024-01-01"]),
        (["--start", "2024-01-01", "--end", "2024-01-31"], {"MAGE_DBT_BACKFILL_MAX_INTERVALS": "10"},
         ["31 day intervals, more than the maximum of 10", "--yes"]),
        (["--start", "2020-01-01", "--end", "2024-12-31"], {}, ["1827 day intervals, more than the maximum of 366"]),
        (["--start", "2024-01-01", "--end", "2024-01-03", "--concurrency", "2"], {},
         ["--concurrency 2 needs a warehouse", "DuckDB"]),
        (["--start", "2024-01-01", "--end", "2024-01-03", "--interval", "fortnight"], {}, ["unknown interval 'fortnight'"]),
        (["--start", "yesterday", "--end", "2024-01-03"], {}, ["'yesterday' is not a date"]),
    ],
    ids=["end-before-start", "month-misaligned", "week-misaligned", "limit-env", "limit-default",
         "duckdb-concurrency", "bad-interval", "bad-date"],
)
def test_bad_ranges_are_rejected_before_anything_starts(project, args, env, fragments):
    result = cli(project, "backfill", PIPELINE, *args, env=env)
    _assert_rejected(result, *fragments)
    assert backfill_ids(project) == []
    _no_flow_runs(f"{PIPELINE}-")


def test_bad_resume_requests_are_rejected(project):
    unknown = cli(project, "backfill", "--resume", "bfcheck-20240101-20240102-beef")
    _assert_rejected(unknown, "unknown backfill id 'bfcheck-20240101-20240102-beef'")

    mixed = cli(project, "backfill", PIPELINE, "--resume", "whatever", "--start", "2024-01-01")
    _assert_rejected(mixed, "--resume runs the recorded plan", "PIPELINE, --start")

    missing = cli(project, "backfill", PIPELINE, "--start", "2024-01-01")
    _assert_rejected(missing, "backfill needs --end")

    unknown_pipeline = cli(project, "backfill", "nosuch", "--start", "2024-01-01", "--end", "2024-01-02")
    _assert_rejected(unknown_pipeline, "unknown pipeline 'nosuch'")
    assert backfill_ids(project) == []

    listing = cli(project, "backfills")
    assert listing.returncode == 0 and "no backfills yet" in listing.stdout, listing.stderr[-2000:]
