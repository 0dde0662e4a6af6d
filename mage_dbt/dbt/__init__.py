"""dbt itself: the parsed manifest and its cache, parse-time vars, typed nodes, selection, invocation.

* `manifest` — parse once per project revision, target and parse-relevant vars; the on-disk cache
  (`manifest_pickle` is its pickle format); `parse_vars` records which vars a parse depends on;
* `nodes` — typed, frozen records of manifest nodes; `selection` — the shortest exact `--select`;
* `invocation` — the one door to dbt (a process-wide lock, the invocation log, node results);
* `executor` — the executor protocol and the in-process executor that runs a group of nodes;
  `json_log_executor` (the dbt CLI, read through its JSON log) and `worker_executor` +
  `worker_process` (a dbt worker process) are the others; `executor_choice` picks one.

This package is `mage_dbt.dbt`; it does not shadow dbt-core's `dbt`: every import in mage_dbt is
absolute, so `import dbt` always means dbt-core (tests/test_layering.py checks it).
"""
