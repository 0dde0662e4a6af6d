"""Run policies of a pipeline file: retries (with backoff and jitter) and timeouts, and which one a block gets.

Owns the pydantic models of the policy keys, the effective policy of one block (`RunPolicy`, with the
delay before each retry) and its resolution: a block's own keys, else the first matching dbt
selection policy that sets the key, else the pipeline's `run_policy:`, else no retry and no timeout.

```yaml
run_policy:                   # pipeline level: the default of every block (not a limit on the whole run)
  retries: 1
  retry_delay_seconds: 10
  retry_backoff: exponential  # constant (default) | exponential: delay x 2^(try - 1)
  retry_jitter_factor: 0.2    # each delay varies at random by up to ±20%
  timeout_seconds: 3600
dbt:
  select: ["*"]
  policies:                   # per dbt selection, keyed by a dbt selector; the first match that sets a key wins
    - {select: "tag:flaky", retries: 2}
blocks:
  - {name: load_orders, type: python, retries: 3, timeout_seconds: 60}
```
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field

POLICY_KEYS = ("retries", "retry_delay_seconds", "retry_backoff", "retry_jitter_factor", "timeout_seconds")


class PolicyFields(BaseModel):
    """The policy keys; unset keys fall through to the next level. `BlockSpec` inherits them."""

    retries: int | None = Field(default=None, ge=0)
    retry_delay_seconds: float | None = Field(default=None, ge=0)
    retry_backoff: Literal["constant", "exponential"] | None = None
    retry_jitter_factor: float | None = Field(default=None, ge=0, le=1)
    timeout_seconds: float | None = Field(default=None, gt=0)

    def policy_keys(self) -> dict[str, Any]:
        """The keys this level sets."""
        return {k: getattr(self, k) for k in POLICY_KEYS if getattr(self, k) is not None}


class RunPolicySpec(PolicyFields):
    """`run_policy:` at the top of a pipeline file: the default of every block."""

    model_config = ConfigDict(extra="forbid")


class SelectionPolicy(RunPolicySpec):
    """A policy for the dbt nodes a dbt selector picks (`dbt: policies: [...]`)."""

    select: str = Field(min_length=1)


@dataclass(frozen=True)
class RunPolicy:
    """The effective policy of one block."""

    retries: int = 0
    retry_delay_seconds: float = 0.0
    retry_backoff: str = "constant"
    retry_jitter_factor: float = 0.0
    timeout_seconds: float | None = None

    @property
    def tries(self) -> int:
        return self.retries + 1

    def delay(self, failed_try: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after try number `failed_try` (1-based) failed, before the next one."""
        base = self.retry_delay_seconds
        if self.retry_backoff == "exponential":
            base *= 2 ** (failed_try - 1)
        if self.retry_jitter_factor and base:
            spread = base * self.retry_jitter_factor
            base += (rng or random).uniform(-spread, spread)
        return max(base, 0.0)


DEFAULT_POLICY = RunPolicy()


def merge_policy(levels: Iterable[Mapping[str, Any]]) -> RunPolicy:
    """One policy from key sets ordered most specific first: each key from the first level that sets it."""
    merged: dict[str, Any] = {}
    for level in levels:
        for key, value in level.items():
            merged.setdefault(key, value)
    return RunPolicy(**merged)


def resolve_policies(spec: Any, blocks: Mapping[str, Any],
                     select: Callable[[str], set[str]] | None) -> tuple[dict[str, RunPolicy], list[int]]:
    """The effective policy of every block that has one, and the indexes of the `dbt: policies:`
    entries whose selector picks none of `blocks` (`select`: dbt selector -> unique ids)."""
    pipeline_keys = spec.run_policy.policy_keys()
    selection = list(spec.dbt.policies) if spec.dbt is not None else []
    matched = [select(p.select) if select is not None else set() for p in selection]
    out: dict[str, RunPolicy] = {}
    for name, block in blocks.items():
        levels = [block.spec.policy_keys()] if block.spec is not None else []
        if block.unique_id:
            levels += [p.policy_keys() for p, ids in zip(selection, matched) if block.unique_id in ids]
        policy = merge_policy([*levels, pipeline_keys])
        if policy != DEFAULT_POLICY:
            out[name] = policy
    ids = {b.unique_id for b in blocks.values() if b.unique_id}
    return out, [i for i, chosen in enumerate(matched) if not chosen & ids]
