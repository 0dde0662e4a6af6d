"""What a pipeline run produced: the status of every block (`BlockResult`) and the run's `RunSummary`.

`mage_dbt.runs.pipeline_run` writes the summary to `<data_dir>/runs/<id>/summary.json`, logs it as
one table and makes it the flow run's final state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SUCCESS, FAILED, SKIPPED, CANCELLED = "success", "failed", "skipped", "cancelled"


@dataclass
class BlockResult:
    name: str
    kind: str
    status: str
    message: str | None = None
    seconds: float = 0.0
    rows: int | None = None
    dbt_status: str | None = None
    unique_id: str | None = None
    tries: int = 1  # more than 1: retried by its run policy
    timed_out: bool = False  # failed because it passed its timeout_seconds (Prefect state TimedOut)
    # Microbatch models: dbt's batches that failed ([start, end) ISO pairs; a retry runs only these).
    failed_batches: list[list[str]] | None = None
    batches: int | None = None
    # dbt tests: the failing rows dbt counted, and (store_failures) the relation that holds them.
    failures: int | None = None
    failures_relation: str | None = None
    reused: bool = False  # not run: its state key matched its last build (mage_dbt.runs.reuse)


@dataclass
class RunSummary:
    pipeline: str
    execution_date: str
    results: dict[str, BlockResult] = field(default_factory=dict)
    dbt_invocations: int = 0
    # Ephemeral models dbt compiled (success) or did not reach (skipped): not blocks that ran.
    ephemeral: dict[str, str] = field(default_factory=dict)
    # Ctrl-C stopped the run: blocks that did not finish are CANCELLED (mage_dbt.runs.interrupts).
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return all(r.status == SUCCESS for r in self.results.values())

    def names(self, status: str) -> list[str]:
        return sorted(n for n, r in self.results.items() if r.status == status)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "execution_date": self.execution_date,
            "dbt_invocations": self.dbt_invocations,
            "results": {n: asdict(r) for n, r in self.results.items()},
            "ephemeral": dict(self.ephemeral),
            "interrupted": self.interrupted,
        }
