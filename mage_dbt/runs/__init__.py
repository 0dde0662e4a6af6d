"""Running pipelines: the run of one pipeline for one date, and what Prefect records about it.

* `pipeline_run` — the body of the pipeline flow (`mage_dbt.flows.pipeline_flow`): context, resolve,
  run, report; `project_sync` — which revision of a git-synced dbt project a run uses, and the sync
  flow's body (`mage_dbt.sync_flow`);
* `runner` — units in DAG order, failures skip their downstream, the run summary;
* `task_runs` — one Prefect task run per block; `heartbeats` — flow-run heartbeats;
* `history` — past runs read from Prefect; `retry` — re-run the blocks that did not succeed;
* `prefect_setup` — running a flow in this process, quietly, for the CLI;
* `run_artifacts` — the run summary as a markdown artifact; `assets` — the relations a run wrote
  as Prefect asset materializations with their upstream assets.
"""
