"""Backfills: run a pipeline over a date range, one Prefect flow run per interval.

* `plan` — the intervals, the backfill id and the pipeline fingerprint, recorded on disk;
* `state` — what Prefect knows: each interval's state, read from flow runs by the backfill's tag;
* `lock` — whether a process of the backfill is alive;
* `flow` — the parent backfill flow (in-process subflows, or worker processes for concurrency);
* `workers` / `worker` — the worker processes behind `--concurrency N`;
* `safety` — which blocks several intervals may run at once (`--concurrency N` refuses the others);
* `progress` — the live progress bar; `artifacts` — the progress artifact and the final table in Prefect.
"""
