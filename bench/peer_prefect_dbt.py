"""One run of a prefect-dbt peer variant of bench_dbt.py, inside one Prefect flow run.

Run by the PEER virtualenv's python (bench/.work/peer-venv, made by bench/peer.py), never by the
project's: prefect-dbt is not a dependency of mage_dbt. What a Prefect user would write:

  p1  `PrefectDbtRunner(settings).invoke(["build", ...])` inside a `@flow`: dbt drives the build
      (one dbtRunner invocation) and prefect-dbt creates one Prefect task run per dbt node;
  p2  `PrefectDbtOrchestrator(settings, execution_mode=ExecutionMode.PER_WAVE).run_build(...)`
      inside a `@flow`: prefect-dbt computes the DAG's waves and runs one `dbt build --select
      <wave>` per wave (tests placed as in `dbt build`); no task run per node in this mode.

The node statuses are written as JSON to --summary; a failing build fails the flow (exit != 0).

    peer-venv/bin/python bench/peer_prefect_dbt.py p1 --project-dir D --profiles-dir P \
        --target pg --vars '{execution_date: 2024-01-15}' --summary out.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefect import flow


def _settings(project_dir: str, profiles_dir: str):
    from prefect_dbt import PrefectDbtSettings

    return PrefectDbtSettings(project_dir=Path(project_dir), profiles_dir=Path(profiles_dir))


def run_p1(settings, target: str, dbt_vars: str) -> dict[str, str]:
    from prefect_dbt import PrefectDbtRunner

    result = PrefectDbtRunner(settings=settings).invoke(
        ["build", "--vars", dbt_vars, "--target", target])
    if not result.success:
        raise RuntimeError(f"dbt build failed: {result.exception}")
    return {r.node.unique_id: str(getattr(r.status, "value", r.status))
            for r in result.result.results}


def run_p2(settings, target: str, dbt_vars: str) -> dict[str, str]:
    # the orchestrator is beta and lives in a private module (prefect-dbt >= 0.7.17)
    from prefect_dbt.core._orchestrator import ExecutionMode, PrefectDbtOrchestrator

    orchestrator = PrefectDbtOrchestrator(settings=settings, execution_mode=ExecutionMode.PER_WAVE)
    results = orchestrator.run_build(target=target, extra_cli_args=["--vars", dbt_vars])
    return {uid: str(r.get("status")) for uid, r in results.items()}


@flow(name="prefect-dbt-bench")
def bench_flow(variant: str, project_dir: str, profiles_dir: str, target: str,
               dbt_vars: str) -> dict[str, str]:
    run = {"p1": run_p1, "p2": run_p2}[variant]
    return run(_settings(project_dir, profiles_dir), target, dbt_vars)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variant", choices=["p1", "p2"])
    for option in ("--project-dir", "--profiles-dir", "--target", "--vars", "--summary"):
        parser.add_argument(option, required=True)
    args = parser.parse_args()
    statuses = bench_flow(args.variant, args.project_dir, args.profiles_dir, args.target, args.vars)
    Path(args.summary).write_text(json.dumps(statuses, indent=1))


if __name__ == "__main__":
    main()
