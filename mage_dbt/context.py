"""The run context: the values every block of one run sees (dates, full refresh, vars, target).

The same values reach dbt (`var('execution_date')`, `var('interval_start')`, ...), SQL templates
(`{{ execution_date }}`) and Python blocks (keyword arguments).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Mapping

from mage_dbt.dates import Interval, dbt_vars, interval_for


@dataclass(frozen=True)
class RunContext:
    pipeline: str
    interval: Interval
    full_refresh: bool = False
    vars: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    target: str | None = None
    run_id: str = "local"
    dbt_commit: str | None = None
    # dbt's event-time window for microbatch models ([start, end)); None: dbt picks batches from now.
    event_time: tuple[datetime, datetime] | None = None
    # A retry: microbatch model id -> the batch windows that failed (only those run again).
    retry_batches: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=lambda: MappingProxyType({}))
    # A slim run (--changed): dbt defers to the relations of the state manifest in this folder.
    defer_state: str | None = None

    @property
    def execution_date(self) -> datetime:
        return self.interval.start

    @property
    def interval_start(self) -> datetime:
        return self.interval.start

    @property
    def interval_end(self) -> datetime:
        return self.interval.end

    def date_vars(self) -> dict[str, str]:
        return dbt_vars(self.interval)

    def dbt_vars(self) -> dict[str, Any]:
        """What dbt receives through `--vars`: the user's vars, then the dates (dates win)."""
        return {**dict(self.vars), **self.date_vars()}

    def template_values(self) -> dict[str, Any]:
        """Names available to templated SQL and dbt command arguments."""
        return {
            **self.date_vars(),
            "vars": dict(self.vars),
            "full_refresh": self.full_refresh,
            "target": self.target,
            "run_id": self.run_id,
            "pipeline": self.pipeline,
        }


def run_dbt_vars(spec: Any, execution_date: str | datetime, vars: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `--vars` dbt gets on a run of pipeline `spec` (a PipelineSpec) for `execution_date`:
    the pipeline's vars, then `vars`, then the run's dates (what parse-once keys its manifest on)."""
    return make_context(spec.name, execution_date, interval=spec.interval, timezone=spec.timezone,
                        vars={**spec.vars, **(vars or {})}).dbt_vars()


def make_context(
    pipeline: str,
    execution_date: str | datetime,
    *,
    interval: str = "day",
    timezone: str = "UTC",
    full_refresh: bool = False,
    vars: Mapping[str, Any] | None = None,
    target: str | None = None,
    run_id: str = "local",
    dbt_commit: str | None = None,
    event_time: str = "run_interval",
    event_time_end: datetime | None = None,
) -> RunContext:
    """Validate the execution date and build the context of one run.

    `event_time`: "run_interval" gives dbt's microbatch models the window [interval start,
    `event_time_end` or interval end); "dbt_now" gives none (dbt picks the batches from the
    current time, as a plain `dbt run`).
    """
    span = interval_for(execution_date, interval, timezone)
    return RunContext(
        pipeline=pipeline,
        interval=span,
        event_time=None if event_time == "dbt_now" else (span.start, event_time_end or span.end),
        full_refresh=full_refresh,
        vars=MappingProxyType(dict(vars or {})),
        target=target,
        run_id=run_id,
        dbt_commit=dbt_commit,
    )
