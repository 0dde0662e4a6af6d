"""Full refresh: which models a full refresh rebuilds, drift detection, rebuild over a date range.

* `full_refresh` — targeted full refresh plans and how a dbt group splits into phases for it;
* `drift` — does an incremental model's SQL still produce its table's columns;
* `rebuild` — the flows that full-refresh a dbt project, and rebuild with history.
"""
