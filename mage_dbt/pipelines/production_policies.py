"""The production run policies of a pipeline file: `concurrency:`, `notify:` and `trigger:`.

This module owns the format of these keys (pydantic models with unknown keys refused, so
`pipelines/spec.py` reports their errors with file and line like any other key). What they do lives
elsewhere: slots are taken in `mage_dbt.runs.concurrency`, alerts and triggers are installed by
`mage_dbt.deploy.alerts` and `mage_dbt.deploy.triggers`; the checks that need every pipeline of the
project (a shared concurrency name with two limits, a trigger cycle, an unknown upstream) are in
`mage_dbt.pipelines.policy_checks`.

```yaml
concurrency:
  limit: 1                 # at most 1 run of this pipeline at a time (a Prefect global concurrency limit)
  name: nightly            # optional: pipelines naming the same limit share its slots
  max_wait_seconds: 600    # a run that waits longer for its slots fails (default: wait as long as it takes)
notify:                    # Prefect automations installed by `mage-dbt deploy`
  - on: [failed, crashed]
    webhook_secret: ops-webhook-url   # a Prefect Secret block holding the URL (never the URL itself)
trigger:
  after: [load_raw]        # run when a run of load_raw completes, with its execution date
  on: completed
```
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

OUTCOMES = ("failed", "crashed", "timed_out", "drift_found", "backfill_finished")
# Prefect refuses these characters in a global concurrency limit's or a block's name.
_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.:\-]*$"


class ConcurrencySpec(BaseModel):
    """How many runs of this pipeline (or of its named group) may run at once, and how long one waits."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(ge=1)
    name: str | None = Field(default=None, pattern=_NAME)
    max_wait_seconds: float | None = Field(default=None, gt=0)


class NotifySpec(BaseModel):
    """On which outcomes to alert, and where: a Prefect notification block, or a webhook URL kept in a
    Prefect Secret block (the pipeline file names blocks, never URLs or tokens)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    on: list[Literal["failed", "crashed", "timed_out", "drift_found", "backfill_finished"]] = Field(min_length=1)
    block: str | None = Field(default=None, pattern=r"^[a-z0-9\-]+/[A-Za-z0-9_.\-]+$")  # <block type>/<name>
    webhook_secret: str | None = Field(default=None, pattern=r"^[a-z0-9\-]+$")

    _on = field_validator("on", mode="before")(lambda cls, v: [v] if isinstance(v, str) else v)

    @model_validator(mode="after")
    def _one_target(self) -> "NotifySpec":
        if (self.block is None) == (self.webhook_secret is None):
            raise ValueError("give exactly one of 'block' (e.g. slack-webhook/ops) or 'webhook_secret' "
                             "(the name of a Prefect Secret block holding the webhook URL)")
        return self


class TriggerSpec(BaseModel):
    """Run this pipeline when a run of each pipeline in `after` ends `on` an outcome, same execution date."""

    model_config = ConfigDict(extra="forbid")

    after: list[str] = Field(min_length=1)
    on: Literal["completed"] = "completed"

    _after = field_validator("after", mode="before")(lambda cls, v: [v] if isinstance(v, str) else v)


def as_notify_list(value: Any) -> Any:
    """`notify:` takes one mapping or a list of them."""
    return [value] if isinstance(value, dict) else ([] if value is None else value)
