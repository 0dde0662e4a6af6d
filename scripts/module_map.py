"""The old -> new module map of the package restructure (issue 14), as data.

`MODULES` maps every module that moved to its new dotted name. `SYMBOLS` maps names that moved to
another module than the one their module moved to (keyed by the module they are imported from,
after the `MODULES` rename, so old and half-rewritten code both match). `scripts/rewrite_imports.py`
applies both to Python files (imports, patch targets, "module:attr" strings) and to text files
(dotted names and `mage_dbt/<old>.py` paths in docs, Makefiles, YAML).

`mage_dbt.blocks` and `mage_dbt.deploy` were modules and are now packages: a reference followed by
one of the package's new submodules (`NEW_SUBMODULES`) is new and left alone, any other is old.
"""

from __future__ import annotations

MODULES: dict[str, str] = {
    # dbt/: the manifest and its cache, parse-time vars, nodes, selection, invocation, executors
    "mage_dbt.manifest": "mage_dbt.dbt.manifest",
    "mage_dbt.manifest_pickle": "mage_dbt.dbt.manifest_pickle",
    "mage_dbt.parse_vars": "mage_dbt.dbt.parse_vars",
    "mage_dbt.nodes": "mage_dbt.dbt.nodes",
    "mage_dbt.node_selection": "mage_dbt.dbt.selection",
    "mage_dbt.dbt_invocation": "mage_dbt.dbt.invocation",
    "mage_dbt.dbt_executor": "mage_dbt.dbt.executor",
    # blocks/: block records, Python/SQL/dbt command blocks, decorators, support, outputs, edges
    "mage_dbt.blocks": "mage_dbt.blocks.block",
    "mage_dbt.block_support": "mage_dbt.blocks.support",
    "mage_dbt.block_runners": "mage_dbt.blocks.runners",
    "mage_dbt.python_blocks": "mage_dbt.blocks.python",
    "mage_dbt.sql_blocks": "mage_dbt.blocks.sql",
    "mage_dbt.decorators": "mage_dbt.blocks.decorators",
    "mage_dbt.outputs": "mage_dbt.blocks.outputs",
    "mage_dbt.edges": "mage_dbt.blocks.edges",
    "mage_dbt.dbt_command": "mage_dbt.blocks.dbt_command",
    "mage_dbt.dbt_command_output": "mage_dbt.blocks.dbt_command_output",
    # pipelines/: the pipeline file format, the resolved pipeline and its units, the graph picture
    "mage_dbt.pipeline_spec": "mage_dbt.pipelines.spec",
    "mage_dbt.pipeline": "mage_dbt.pipelines.pipeline",
    "mage_dbt.graph_render": "mage_dbt.pipelines.graph",
    # runs/: runner, task-run reporting, heartbeats, retry, history, in-process Prefect
    "mage_dbt.runner": "mage_dbt.runs.runner",
    "mage_dbt.task_runs": "mage_dbt.runs.task_runs",
    "mage_dbt.heartbeats": "mage_dbt.runs.heartbeats",
    "mage_dbt.retry": "mage_dbt.runs.retry",
    "mage_dbt.run_history": "mage_dbt.runs.history",
    "mage_dbt.prefect_setup": "mage_dbt.runs.prefect_setup",
    # refresh/: targeted full refresh, drift, rebuild
    "mage_dbt.full_refresh": "mage_dbt.refresh.full_refresh",
    "mage_dbt.drift": "mage_dbt.refresh.drift",
    "mage_dbt.rebuild": "mage_dbt.refresh.rebuild",
    # deploy/: deployments, schedules, prefect.yaml, serve, the local Prefect server
    "mage_dbt.deploy": "mage_dbt.deploy.deployments",
    "mage_dbt.deploy_schedules": "mage_dbt.deploy.schedules",
    "mage_dbt.deploy_yaml": "mage_dbt.deploy.prefect_yaml",
    "mage_dbt.serve": "mage_dbt.deploy.serve",
    "mage_dbt.local_server": "mage_dbt.deploy.local_server",
    # cli/
    "mage_dbt.scaffold": "mage_dbt.cli.scaffold",
    # modules added on the issue-22 branch while the restructure was under way
    "mage_dbt.interrupts": "mage_dbt.runs.interrupts",
    "mage_dbt.run_guard": "mage_dbt.runs.run_guard",
    "mage_dbt.run_liveness": "mage_dbt.runs.run_liveness",
    "mage_dbt.prefect_reachable": "mage_dbt.cli.prefect_reachable",
    "mage_dbt.profile_check": "mage_dbt.dbt.profile_check",
    # modules added on the issue-23 branch
    "mage_dbt.date_reads": "mage_dbt.refresh.date_reads",
    "mage_dbt.block_progress": "mage_dbt.runs.block_progress",
    "mage_dbt.pruning": "mage_dbt.dbt.pruning",
}

# Modules that did not exist before (split out of a module above, or a flow's implementation).
NEW_MODULES: tuple[str, ...] = (
    "mage_dbt.dbt.parse_patches",
    "mage_dbt.dbt.selection_cache",
    "mage_dbt.dbt.manifest_view",  # manifest.json with attribute access: state keys without importing dbt
    "mage_dbt.dbt.child_stop",  # Ctrl-C / time limits forwarded to a dbt child process, no event lost
    "mage_dbt.warehouse.profile_light",
    "mage_dbt.pipelines.schedules",
    "mage_dbt.runs.pipeline_run",
    "mage_dbt.runs.project_sync",
    "mage_dbt.warehouse.catalog",
    "mage_dbt.deploy.server_process",
    "mage_dbt.cli.typer_app",
    "mage_dbt.deploy.zombie_runs",  # issue 22: Prefect's missing-heartbeat automation
    # issue 16 (part B): concurrency limits, alerts, triggers
    "mage_dbt.pipelines.production_policies",
    "mage_dbt.pipelines.policy_checks",
    "mage_dbt.runs.concurrency",
    "mage_dbt.runs.pipeline_events",
    "mage_dbt.deploy.alerts",
    "mage_dbt.deploy.triggers",
    # issue 16 (part A): retries and timeouts
    "mage_dbt.pipelines.run_policies",
    "mage_dbt.runs.block_results",
    "mage_dbt.runs.dbt_listener",
    # issue 15: microbatch models
    "mage_dbt.dbt.microbatch",
    "mage_dbt.runs.microbatch_checks",
    "mage_dbt.backfill.microbatch_phase",
    "mage_dbt.backfill.microbatch_run",
    # issue 20: backfills through a work pool
    "mage_dbt.backfill.pool_runs",
    # issue 19: what analysts see in the Prefect UI
    "mage_dbt.runs.run_artifacts",
    "mage_dbt.backfill.artifacts",
    "mage_dbt.runs.assets",
    "mage_dbt.deploy.parameter_form",
    # issue 17: reuse, plan, slim runs
    "mage_dbt.dbt.state_keys",
    "mage_dbt.dbt.state_store",
    "mage_dbt.dbt.slim",
    "mage_dbt.runs.reuse",
    "mage_dbt.runs.freshness_gate",
    "mage_dbt.runs.run_plan",
    "mage_dbt.runs.slim",
    "mage_dbt.cli.plan_cmds",
    # issue 18: dbt executors
    "mage_dbt.dbt.executor_choice",
    "mage_dbt.dbt.json_log_executor",
    "mage_dbt.dbt.worker_executor",
    "mage_dbt.dbt.worker_process",
)

# Names renamed where they moved (not rewritten by the script: fix by hand if a branch uses them):
# mage_dbt.parse_vars._Recorder/_plain/_sink_call/_is_pure -> mage_dbt.dbt.parse_vars.Recorder/plain/
# sink_call/is_pure; the module global _ACTIVE -> mage_dbt.dbt.parse_vars.ACTIVE.recorder.

_FLOW_IMPL = "mage_dbt.runs.pipeline_run"
_SYNC_IMPL = "mage_dbt.runs.project_sync"

# (module imported from, after the MODULES rename, name) -> the module that defines the name now.
SYMBOLS: dict[tuple[str, str], str] = {
    # mage_dbt.flows keeps the Prefect flow (deployments reference mage_dbt.flows.pipeline_flow)
    ("mage_dbt.flows", "FLOW_NAME"): "mage_dbt.runs.history",
    **{("mage_dbt.flows", name): _FLOW_IMPL for name in (
        "run_pipeline", "run_and_report", "scheduled_time", "summary_lines", "_write_summary",
    )},
    ("mage_dbt.runs.retry", "retry_outputs"): _FLOW_IMPL,
    # mage_dbt.sync_flow keeps the Prefect flow (entrypoint mage_dbt.sync_flow.sync_flow)
    **{("mage_dbt.sync_flow", name): _SYNC_IMPL for name in (
        "COMMIT_TAG", "REF_TAG", "SYNC_FAILED_TAG", "LOG", "DbtProjectHooks", "worktree_commit", "SyncOutcome",
        "sync_one", "sync_repositories", "RunProject", "synced_repository", "prepare_run_project",
        "_checkout_for_run", "record_commit", "run_info", "_tag_flow_run", "run_sync",
    )},
    ("mage_dbt.pipelines.pipeline", "dbt_project_ref"): "mage_dbt.pipelines.spec",
    **{("mage_dbt.deploy.schedules", name): "mage_dbt.pipelines.schedules" for name in (
        "check_cron", "check_timezone", "check_kind", "CRON_HINT",
    )},
    **{("mage_dbt.refresh.drift", name): "mage_dbt.warehouse.catalog" for name in (
        "Catalog", "ProbeError", "UnsupportedWarehouse", "target_config", "Columns", "SUPPORTED", "_quote",
    )},
    ("mage_dbt.backfill.flow", "BACKFILL_FLOW_NAME"): "mage_dbt.backfill.state",
    ("mage_dbt.cli", "app"): "mage_dbt.cli.typer_app",
    **{("mage_dbt.dbt.parse_vars", name): "mage_dbt.dbt.parse_patches" for name in (
        "tracing", "traced_concat", "LOG_ONLY", "DISCARDING_RENDERS", "_var_call", "_has_var", "_env_call",
        "_unchecked", "_passes_through", "_wrap_jinja_function", "_environment_init", "_str_join",
        "_template_render", "_discarding_caller",
    )},
    **{("mage_dbt.deploy.local_server", name): "mage_dbt.deploy.server_process" for name in (
        "supervise", "_idle_stop", "_stop_server", "_die_with_parent", "SUPERVISOR_MODULE", "SUPERVISOR_MARKERS",
    )},
}


def _submodules(package: str) -> frozenset[str]:
    names = [*MODULES.values(), *NEW_MODULES]
    return frozenset(n[len(package) + 1:].split(".")[0] for n in names if n.startswith(package + "."))


# Old modules that are packages now: what may follow their name in new code.
NEW_SUBMODULES: dict[str, frozenset[str]] = {
    old: _submodules(old) for old in MODULES if any(new.startswith(old + ".") for new in MODULES.values())
}
