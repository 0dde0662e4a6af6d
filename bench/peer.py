"""The prefect-dbt peer variants of bench_dbt.py (issue 18): what a Prefect user would pick
instead of mage_dbt, run side by side with (a) `dbt build` and (b) `mage-dbt run`.

  p1  prefect-dbt's `PrefectDbtRunner.invoke(["build"])` in a flow: a task run per dbt node;
  p2  prefect-dbt's `PrefectDbtOrchestrator` in `ExecutionMode.PER_WAVE`: one dbt invocation per
      wave of the DAG.

prefect-dbt is never a dependency of mage_dbt: `ensure_venv()` installs it into its own virtualenv
(bench/.work/peer-venv, git-ignored), with the SAME dbt-core, dbt adapters and prefect versions as
the project virtualenv (read at run time), the way the Makefile installs (`python -m venv`,
`pip install uv`, `uv pip install`). Done once: a venv that already has the right versions is reused.
Each measured run is bench/peer_prefect_dbt.py run by that venv's python, against the benchmark's
Prefect server and warehouse; its node statuses are checked against the nodes `dbt build` builds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import common

PREFECT_DBT_VERSION = "0.7.25"  # needs prefect >= 3.6.17; PER_WAVE orchestrator since 0.7.17
VARIANTS = {"p1": "prefect-dbt PrefectDbtRunner", "p2": "prefect-dbt orchestrator, per wave"}
# b/peer, w/peer: mage-dbt (in-process; worker, the default on Postgres) over the faster of p1 and p2
RATIOS = ("p1/a", "p2/a", "b/p1", "b/p2", "b/peer", "w/p1", "w/p2", "w/peer")
HEADERS = ["size", "target", "a dbt build (s)", "b mage-dbt (s)", "w worker (s)", "p1 runner (s)",
           "p2 per-wave (s)", *RATIOS]
VENV = common.WORK_DIR / "peer-venv"
RUNNER = common.BENCH_DIR / "peer_prefect_dbt.py"
# versions shared with the project virtualenv (those installed there are pinned in the peer venv)
SHARED = ("prefect", "dbt-core", "dbt-adapters", "dbt-common", "dbt-postgres", "dbt-duckdb")
OK_STATUSES = {"success", "pass", "warn"}
BUILT_TYPES = {"seed", "model", "snapshot", "test"}  # what `dbt build` runs in the generated project


def wanted_versions() -> dict[str, str]:
    pins = {}
    for name in SHARED:
        try:
            pins[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {**pins, "prefect-dbt": PREFECT_DBT_VERSION}


def python() -> Path:
    return VENV / "bin" / "python"


def installed_versions() -> dict[str, str]:
    if not python().exists():
        return {}
    code = ("import json, importlib.metadata as m\nout = {}\n"
            f"for n in {sorted(wanted_versions())!r}:\n"
            "    try: out[n] = m.version(n)\n    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    proc = subprocess.run([str(python()), "-c", code], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def ensure_venv() -> str | None:
    """Make (or reuse) the peer venv; None when it is ready, else why it is not."""
    pins = wanted_versions()
    if installed_versions() == pins:
        return None
    print(f"installing prefect-dbt {PREFECT_DBT_VERSION} into {VENV.relative_to(common.REPO_ROOT)}"
          f" ({', '.join(f'{n}=={v}' for n, v in pins.items())}) ...", flush=True)
    log = common.WORK_DIR / "peer-venv-install.log"
    steps = [[sys.executable, "-m", "venv", str(VENV)],
             [str(python()), "-m", "pip", "install", "-q", "--disable-pip-version-check", "uv"],
             [str(python()), "-m", "uv", "pip", "install", "-q", "--python", str(python()),
              *(f"{name}=={version}" for name, version in pins.items())]]
    for cmd in steps:
        if cmd[1:3] == ["-m", "venv"] and python().exists():
            continue
        result = common.run_timed(cmd, cwd=common.REPO_ROOT, env=common.base_env(), log=log,
                                  timeout=900)
        if not result.ok:
            return f"installing the peer venv failed (see {log}):\n{result.tail}"
    got = installed_versions()
    return None if got == pins else f"peer venv has {got}, wanted {pins}"


def command(variant: str, project_dir: Path, profiles_dir: Path, target: str, dbt_vars: str,
            summary: Path) -> list[str]:
    return [str(python()), str(RUNNER), variant, "--project-dir", str(project_dir),
            "--profiles-dir", str(profiles_dir), "--target", target, "--vars", dbt_vars,
            "--summary", str(summary)]


def check_nodes(summary: Path, manifest: Path) -> str | None:
    """None when the run built every node `dbt build` builds, all successfully; else what differs."""
    try:
        statuses = json.loads(summary.read_text())
    except (OSError, ValueError) as exc:
        return f"no node summary from the peer run: {exc}"
    nodes = json.loads(manifest.read_text())["nodes"]
    expected = {uid for uid, n in nodes.items() if n["resource_type"] in BUILT_TYPES}
    bad = {uid: s for uid, s in statuses.items() if s not in OK_STATUSES}
    missing, extra = expected - set(statuses), set(statuses) - expected
    if bad or missing or extra:
        return (f"{len(statuses)} nodes run, {len(expected)} expected; not ok: "
                f"{dict(list(bad.items())[:5])}; missing: {sorted(missing)[:5]}; "
                f"extra: {sorted(extra)[:5]}")
    return None


def ratios(medians: dict[str, float | None]) -> dict[str, float | None]:
    peers = [m for m in (medians.get("p1"), medians.get("p2")) if m is not None]
    return {"p1/a": common.ratio(medians.get("p1"), medians.get("a")),
            "p2/a": common.ratio(medians.get("p2"), medians.get("a")),
            "b/p1": common.ratio(medians.get("b"), medians.get("p1")),
            "b/p2": common.ratio(medians.get("b"), medians.get("p2")),
            "b/peer": common.ratio(medians.get("b"), min(peers) if peers else None),
            "w/p1": common.ratio(medians.get("w"), medians.get("p1")),
            "w/p2": common.ratio(medians.get("w"), medians.get("p2")),
            "w/peer": common.ratio(medians.get("w"), min(peers) if peers else None)}


def row(summary: dict) -> list[str]:
    medians, r = summary["median"], summary["ratios"]
    return [str(summary["size"]), summary["target"],
            *(common.fmt(medians.get(v)) for v in ("a", "b", "w", "p1", "p2")),
            *(common.fmt(r.get(k)) for k in RATIOS)]
