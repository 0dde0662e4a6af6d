"""Benchmark of issue 13: a repeat `mage-dbt run` on the embedded default vs a plain `dbt build`.

No PREFECT_API_URL anywhere and no server started by hand: a fresh PREFECT_HOME (temporary
folder), a copy of the demo project, DuckDB. The first `mage-dbt run` starts the local Prefect
server (timed and shown as "first run"); then a warm-up of each variant, then `--repeat`
repetitions with the variants interleaved (order rotating):

  (a) `dbt build` of the demo pipeline's dbt nodes, with the vars mage-dbt passes for the date
  (b) `mage-dbt run demo -d 2024-02-01`: the shared local Prefect server (the new default)
  (c) the same with MAGE_DBT_LOCAL_SERVER=0: Prefect's temporary server per command (the old default)
  (d) `mage-dbt run demo_dbt -d 2024-02-01`: a pipeline of the demo's dbt selection only, so
      exactly (a)'s 67 nodes (written into the project copy; the landed orders it reads are there)

The demo pipeline also has Python and SQL blocks (load and land the day's orders, reconcile,
export a Parquet report); (b) and (c) run them too, (a) cannot. Prints medians, b/a, the paired
b/a (median of per-repetition ratios), c/a and d/a; the target of issue 13 (a repeat run costs
<= 1.3 x plain dbt build of the same nodes) is d/a, and b/a is the stricter figure. At the end
the local server is stopped (`mage-dbt server stop`) and the PREFECT_HOME removed.

    .venv/bin/python bench/bench_embedded.py [--repeat 5] [--variants a,b,c,d]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from pathlib import Path

import common

PIPELINE = "demo"
EXECUTION_DATE = "2024-02-01"
VARIANTS = {"a": "dbt build", "b": "mage-dbt run (local server)", "c": "mage-dbt run (MAGE_DBT_LOCAL_SERVER=0)",
            "d": "mage-dbt run, dbt blocks only (local server)"}
DBT_ONLY = "demo_dbt"  # the demo pipeline's dbt selection without its Python and SQL blocks: a's nodes exactly
WORK = common.WORK_DIR / "embedded"


def copy_demo(dest: Path) -> Path:
    """The repository's own demo project, without generated files (as tests/conftest.py copies it)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in ("mage_dbt.yaml", "profiles.yml"):
        shutil.copy2(common.REPO_ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("target", "logs", "dbt_packages", "__pycache__", ".mage_dbt")
    shutil.copytree(common.REPO_ROOT / "flows", dest / "flows", ignore=ignore)
    shutil.copytree(common.REPO_ROOT / "dbt_projects" / "demo", dest / "dbt_projects" / "demo", ignore=ignore)
    (dest / "flows" / f"{DBT_ONLY}.yaml").write_text(
        "description: the demo pipeline's dbt nodes only (bench variant d)\n"
        "dbt:\n  project: demo\n  select: [\"*\"]\n  command: build\n")
    return dest


def pipeline_dbt_nodes(project: Path) -> int | None:
    """How many dbt nodes the last `mage-dbt run` ran: its entries in mage_dbt's invocation log."""
    log = project / ".mage_dbt" / "logs" / "dbt_invocations.jsonl"
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
    if not entries:
        return None
    last_pid = entries[-1]["pid"]
    return sum(e.get("nodes") or 0 for e in entries
               if e["pid"] == last_pid and e["command"] in ("build", "run", "seed", "snapshot", "test"))


def dbt_vars() -> str:
    """Exactly the --vars mage-dbt passes to dbt for the execution date."""
    from mage_dbt.context import make_context

    return json.dumps(make_context(PIPELINE, EXECUTION_DATE).dbt_vars())


def commands(project: Path) -> dict[str, list[str]]:
    mage = [common.venv_exe("mage-dbt"), "run", PIPELINE, "--execution-date", EXECUTION_DATE]
    dbt = [common.venv_exe("dbt"), "build", "--vars", dbt_vars(), "--profiles-dir", str(project),
           "--project-dir", str(project / "dbt_projects" / "demo"), "--target", "duckdb"]
    return {"a": dbt, "b": mage, "c": mage, "d": [*mage[:2], DBT_ONLY, *mage[3:]]}


def environments(project: Path, home: Path) -> dict[str, dict[str, str]]:
    env = common.base_env(PREFECT_HOME=str(home), MAGE_DBT_DATA_DIR=str(project / ".mage_dbt"),
                          DBT_PROFILES_DIR=str(project), COLUMNS="200")
    for key in ("PREFECT_API_URL", "PREFECT_UI_API_URL", "MAGE_DBT_LOCAL_SERVER", "MAGE_DBT_LOCAL_SERVER_PORT",
                "MAGE_DBT_LOCAL_SERVER_IDLE_MINUTES", "DBT_PROJECT_DIR", "DBT_TARGET", "DBT_TARGET_PATH"):
        env.pop(key, None)
    return {"a": env, "b": env, "c": {**env, "MAGE_DBT_LOCAL_SERVER": "0"}, "d": env}


def dbt_total(log: Path) -> int | None:
    match = re.search(r"TOTAL=(\d+)", log.read_text()) if log.is_file() else None
    return int(match.group(1)) if match else None


def run_benchmark(args: argparse.Namespace) -> dict:
    project = copy_demo(WORK / "project")
    logs = WORK / "bench-logs"
    shutil.rmtree(logs, ignore_errors=True)
    home = Path(tempfile.mkdtemp(prefix="bench-embedded-prefect-"))
    cmds, envs = commands(project), environments(project, home)
    seconds: dict[str, list[float]] = {v: [] for v in args.variants}
    errors: dict[str, str] = {}
    result: dict = {"seconds": seconds, "errors": errors}
    try:
        print(f"PREFECT_HOME {home} (fresh), no PREFECT_API_URL; project copy {project}", flush=True)
        first = common.run_timed(cmds["b"], cwd=project, env=envs["b"], log=logs / "first-run.log")
        result["first_run"] = first.seconds
        print(f"first run (starts the local Prefect server, fresh database): {first.seconds:.2f} s"
              + ("" if first.ok else f"  FAILED (exit {first.returncode})\n{first.tail}"), flush=True)
        if not first.ok:
            errors["b"] = first.tail
            return result
        nodes = pipeline_dbt_nodes(project)
        for variant in args.variants:  # warm-up: dbt's partial parse, mage_dbt's manifest cache
            warm = common.run_timed(cmds[variant], cwd=project, env=envs[variant], log=logs / f"{variant}-warmup.log")
            if not warm.ok:
                errors[variant] = warm.tail
        total = dbt_total(logs / "a-warmup.log")
        result["nodes"] = {"pipeline_dbt_nodes": nodes, "dbt_build_total": total}
        print(f"same nodes: mage-dbt ran {nodes} dbt nodes, dbt build ran {total}", flush=True)
        variants = [v for v in args.variants if v not in errors]
        for rep in range(args.repeat):
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for variant in order:
                run = common.run_timed(cmds[variant], cwd=project, env=envs[variant],
                                       log=logs / f"{variant}-{rep}.log")
                print(f"  rep {rep + 1}/{args.repeat} ({variant}) {VARIANTS[variant]}: {run.seconds:.2f} s"
                      + ("" if run.ok else f"  FAILED (exit {run.returncode})"), flush=True)
                if run.ok:
                    seconds[variant].append(run.seconds)
                else:
                    errors[variant] = run.tail
    finally:
        stop = common.run_timed([common.venv_exe("mage-dbt"), "server", "stop"], cwd=project, env=envs["b"],
                                log=logs / "server-stop.log")
        print(stop.tail.strip() or "(server stop said nothing)", flush=True)
        shutil.rmtree(home, ignore_errors=True)
    return result


def paired(seconds: dict[str, list[float]], top: str, bottom: str) -> float | None:
    t, b = seconds.get(top, []), seconds.get(bottom, [])
    if not t or len(t) != len(b):
        return None
    return common.median([x / y for x, y in zip(t, b)])


def report(result: dict, args: argparse.Namespace) -> None:
    seconds = result["seconds"]
    medians = {v: common.median(seconds.get(v, [])) for v in VARIANTS}
    ratios = {
        "b/a": common.ratio(medians["b"], medians["a"]), "b/a paired": paired(seconds, "b", "a"),
        "c/a": common.ratio(medians["c"], medians["a"]), "c/a paired": paired(seconds, "c", "a"),
        "c/b": common.ratio(medians["c"], medians["b"]),
        "d/a": common.ratio(medians["d"], medians["a"]), "d/a paired": paired(seconds, "d", "a"),
    }
    print(f"\nmedians of {args.repeat} run(s); demo pipeline, execution date {EXECUTION_DATE}, DuckDB, "
          f"embedded default (no PREFECT_API_URL)")
    common.print_table(["variant", "median (s)", "runs (s)"], [
        [f"({v}) {VARIANTS[v]}", common.fmt(medians[v]), " ".join(f"{s:.2f}" for s in seconds.get(v, []))]
        for v in VARIANTS if v in args.variants])
    print("  ".join(f"{k} = {common.fmt(v)}" for k, v in ratios.items()))
    if "first_run" in result:
        print(f"first run on a fresh PREFECT_HOME (server start included): {result['first_run']:.2f} s")
    for variant, tail in result["errors"].items():
        last = tail.strip().splitlines()[-1] if tail.strip() else "(no output)"
        print(f"n/a: ({variant}) {VARIANTS[variant]}: {last}")
    path = common.write_results("bench_embedded", {
        "pipeline": PIPELINE, "execution_date": EXECUTION_DATE, "repeat": args.repeat, "variants": VARIANTS,
        **result, "median": medians, "ratios": ratios,
    })
    print(f"results: {path.relative_to(common.REPO_ROOT)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="repetitions per variant (default 5)")
    parser.add_argument("--variants", default="a,b,c,d", help="subset of a,b,c,d (default all)")
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    if set(args.variants) - set(VARIANTS) or "b" not in args.variants or args.repeat < 1:
        parser.error("--variants must be a subset of a,b,c,d that includes b; --repeat >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report(run_benchmark(args), args)


if __name__ == "__main__":
    main()
