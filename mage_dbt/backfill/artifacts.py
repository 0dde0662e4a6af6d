"""What a backfill shows on its flow run page: a progress artifact while it runs, then a final table.

`BackfillArtifacts.begin` creates a Prefect progress artifact (percent of the plan's intervals
completed or finished otherwise, intervals completed by earlier attempts included); `finished`
updates it as intervals end (one small API call at most every UPDATE_SECONDS, and at the last
interval: a microbatch phase ends every interval of the range at once, and thirty blocking calls in a
row cost a second); `final_table`
publishes one table artifact (key `mage-dbt-backfill-<pipeline>`): interval, status, attempts,
seconds, flow run, message. Outside a flow run, and on any API error, it does nothing: reporting
never changes the backfill's outcome.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mage_dbt.runs.run_artifacts import artifact_key

LOG = logging.getLogger("mage_dbt.backfill")
UPDATE_SECONDS = 2.0  # at most one progress update per this many seconds (the last interval always updates)


class BackfillArtifacts:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress_id: Any = None
        self.total = 0
        self.ended = 0
        self.seconds: dict[str, float] = {}
        self._updated_at = float("-inf")

    def begin(self, backfill_id: str, total: int, already_done: int) -> None:
        self.total, self.ended = max(total, 1), already_done
        if self.enabled:
            self.progress_id = self._call("create_progress_artifact", progress=self.percent,
                                          description=f"backfill {backfill_id}: intervals finished")

    @property
    def percent(self) -> float:
        return round(100.0 * min(self.ended, self.total) / self.total, 1)

    def finished(self, label: str, seconds: float) -> None:
        self.ended += 1
        self.seconds[label] = seconds
        now = time.monotonic()
        if self.progress_id is not None and (self.ended >= self.total or now - self._updated_at >= UPDATE_SECONDS):
            self._updated_at = now
            self._call("update_progress_artifact", artifact_id=self.progress_id, progress=self.percent)

    def final_table(self, pipeline: str, backfill_id: str, intervals: dict[str, dict[str, Any]]) -> None:
        if not self.enabled:
            return
        rows = [{"interval": label, "status": info.get("status"), "attempts": info.get("attempts"),
                 "seconds": round(self.seconds[label], 2) if label in self.seconds else None,
                 "flow run": info.get("flow_run_id"), "message": (info.get("message") or "")[:300]}
                for label, info in intervals.items()]
        self._call("create_table_artifact", table=rows, key=artifact_key(pipeline, "mage-dbt-backfill"),
                   description=f"backfill {backfill_id} of {pipeline}: every interval")

    def _call(self, name: str, **kwargs: Any) -> Any:
        import prefect.artifacts

        try:
            return getattr(prefect.artifacts, name)(**kwargs)
        except Exception as exc:  # reporting must never change the backfill's outcome
            LOG.warning("could not publish the backfill artifact (%s): %s", name, exc)
            return None
