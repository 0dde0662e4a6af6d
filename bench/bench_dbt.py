"""Benchmark of issue 3: what per-model visibility costs compared with one plain `dbt build`.

For each size N (generated project, see gen_project.py) and each target (DuckDB, Postgres), the
same selection is run side by side, the variants interleaved within every repetition:

  (a) `dbt build` — the plain CLI, one process for the whole project;
  (b) `mage-dbt run bench` — mage_dbt's grouped execution with one Prefect task run per node,
      against ONE real Prefect server started for the whole benchmark;
  (c) at N = 50 only, the per-model baseline: `dbt run -s <model>`, one process per model in
      topological order (what Mage's dbt blocks and Cosmos' default mode do);
  (w) `mage-dbt run bench` with the dbt worker executor (MAGE_DBT_DBT_EXECUTOR=worker);
  (j) `mage-dbt run bench` with the JSON-log executor (the dbt CLI as a subprocess);
  (p1) prefect-dbt's PrefectDbtRunner and (p2) its per-wave orchestrator, each in a Prefect flow,
      from their own virtualenv (see peer.py; not in the default set: the first run installs it).

Before timing, each project is seeded and built once (untimed), so every timed run is a steady-state
incremental run with dbt's partial-parse cache warm; mage-dbt gets one untimed warm-up run too.
Prints the medians, the ratios b/a, c/b, w/a, j/a, w/b, j/b (and p1/a, p2/a, b/p1, b/p2 in a
second table when the peers run), the Prefect server's CPU seconds per mage-dbt run (issue 18:
reporting must not be the bottleneck) and the peak RSS of every variant's processes (issue 18:
b <= 1.2 x a at N = 1000; the server excluded); writes every timing to
bench/results/; each process output is kept in bench/.work/dbt-n<N>/bench-logs/.

    .venv/bin/python bench/bench_dbt.py [--sizes 50,200] [--targets duckdb,pg] [--repeat 3]
        [--variants a,b,c,w,j,p1,p2]
"""

from __future__ import annotations

import argparse
import contextlib
import graphlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import common
import gen_project
import peer

EXECUTION_DATE = "2024-01-15"
DBT_VARS = f"{{execution_date: {EXECUTION_DATE}}}"
VARIANTS = {"a": "dbt build", "b": "mage-dbt run", "c": "dbt run -s per model",
            "w": "mage-dbt run, worker executor", "j": "mage-dbt run, json_log executor",
            **peer.VARIANTS}
MAIN_VARIANTS = ("a", "b", "c", "w", "j")  # the columns of the main table; peers get their own
DEFAULT_VARIANTS = "a,b,c,w,j"
# mage-dbt variants and the dbt executor each runs with (mage_dbt.dbt.executor_choice)
MAGE_EXECUTORS = {"b": "in_process", "w": "worker", "j": "json_log"}
FLOW_VARIANTS = (*MAGE_EXECUTORS, *peer.VARIANTS)  # variants that need the Prefect server
BASELINE_SIZE = 50
RATIOS = ("b/a", "b/a paired", "c/b", "c/a", "w/a", "w/a paired", "j/a", "w/b", "j/b")
HEADERS = ["size", "target", "a dbt build (s)", "b mage-dbt (s)", "c per-model (s)", "w worker (s)",
           "j json_log (s)", *RATIOS]


@dataclass
class Case:
    """One (size, target) cell of the benchmark and everything measured for it."""

    size: int
    target: str
    project: Path
    env: dict[str, str]
    variants: list[str]
    seconds: dict[str, list[float]] = field(default_factory=dict)
    server_cpu: dict[str, list[float]] = field(default_factory=dict)  # Prefect server CPU s per run
    peak_rss: dict[str, list[float]] = field(default_factory=dict)  # MB, all processes of a run
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def dbt_dir(self) -> Path:
        return self.project / "dbt_projects" / gen_project.PROJECT_NAME

    def log(self, name: str) -> Path:
        return self.project / "bench-logs" / f"{self.target}-{name}.log"

    def median(self, variant: str) -> float | None:
        return common.median(self.seconds.get(variant, []))

    def paired_ratio(self, numerator: str, denominator: str) -> float | None:
        """Median over repetitions of numerator/denominator within the same repetition: a drift of
        the machine's speed between repetitions cancels out (None unless every repetition has both)."""
        top, bottom = self.seconds.get(numerator, []), self.seconds.get(denominator, [])
        if not top or len(top) != len(bottom):
            return None
        return common.median([t / b for t, b in zip(top, bottom)])

    def summary(self) -> dict:
        medians = {v: self.median(v) for v in VARIANTS}
        return {
            "size": self.size, "target": self.target, "seconds": self.seconds,
            "server_cpu_seconds": self.server_cpu,
            "server_cpu_median": {v: common.median(c) for v, c in self.server_cpu.items()},
            "peak_rss_mb": self.peak_rss,
            "peak_rss_mb_median": {v: common.median(m) for v, m in self.peak_rss.items()},
            "median": medians, "errors": self.errors,
            "ratios": {"b/a": common.ratio(medians["b"], medians["a"]),
                       "b/a paired": self.paired_ratio("b", "a"),
                       "c/b": common.ratio(medians["c"], medians["b"]),
                       "c/a": common.ratio(medians["c"], medians["a"]),
                       "w/a": common.ratio(medians["w"], medians["a"]),
                       "w/a paired": self.paired_ratio("w", "a"),
                       "j/a": common.ratio(medians["j"], medians["a"]),
                       "w/b": common.ratio(medians["w"], medians["b"]),
                       "j/b": common.ratio(medians["j"], medians["b"]),
                       **peer.ratios(medians)},
        }

    def row(self) -> list[str]:
        s = self.summary()
        return [str(self.size), self.target, *(common.fmt(s["median"][v]) for v in MAIN_VARIANTS),
                *(common.fmt(s["ratios"][k]) for k in RATIOS)]


def dbt_cmd(case: Case, command: str, *args: str) -> list[str]:
    return [common.venv_exe("dbt"), command, *args, "--vars", DBT_VARS,
            "--profiles-dir", str(case.project), "--project-dir", str(case.dbt_dir),
            "--target", case.target]


def mage_cmd(case: Case) -> list[str]:
    return [common.venv_exe("mage-dbt"), "run", "bench", "--execution-date", EXECUTION_DATE,
            "--target", case.target]


def model_order(manifest_path: Path) -> list[str]:
    """Model names in topological order, read from the manifest dbt wrote during preparation."""
    nodes = json.loads(manifest_path.read_text())["nodes"]
    models = {uid: n for uid, n in nodes.items() if n["resource_type"] == "model"}
    graph = {uid: [d for d in n["depends_on"]["nodes"] if d in models] for uid, n in models.items()}
    return [models[uid]["name"] for uid in graphlib.TopologicalSorter(graph).static_order()]


def run_flow_variant(case: Case, variant: str, label: str) -> common.RunResult:
    """A variant that records a Prefect flow run (mage-dbt or a prefect-dbt peer), with the
    server CPU seconds it cost; a peer's nodes are checked against what `dbt build` builds."""
    cpu = common.server_cpu_seconds()
    if variant in MAGE_EXECUTORS:
        env = {**case.env, "MAGE_DBT_DBT_EXECUTOR": MAGE_EXECUTORS[variant]}
        result = common.run_timed(mage_cmd(case), cwd=case.project, env=env,
                                  log=case.log(f"{variant}-{label}"), memory=True)
    else:
        summary = case.log(f"{variant}-{label}").with_suffix(".nodes.json")
        summary.unlink(missing_ok=True)
        cmd = peer.command(variant, case.dbt_dir, case.project, case.target, DBT_VARS, summary)
        result = common.run_timed(cmd, cwd=case.project, env=case.env,
                                  log=case.log(f"{variant}-{label}"), memory=True)
        problem = result.ok and peer.check_nodes(summary, case.dbt_dir / "target" / "manifest.json")
        if problem:
            result = common.RunResult(result.seconds, 1, problem)
    if label != "warmup":
        case.server_cpu.setdefault(variant, []).append(common.server_cpu_seconds() - cpu)
    return result


def run_variant(case: Case, variant: str, label: str) -> common.RunResult:
    """Run one variant once, from process start to exit (for (c): the whole per-model loop)."""
    if variant == "a":
        return common.run_timed(dbt_cmd(case, "build"), cwd=case.project, env=case.env,
                                log=case.log(f"a-{label}"), memory=True)
    if variant in FLOW_VARIANTS:
        return run_flow_variant(case, variant, label)
    total = 0.0
    for model in model_order(case.dbt_dir / "target" / "manifest.json"):
        result = common.run_timed(dbt_cmd(case, "run", "-s", model), cwd=case.project,
                                  env=case.env, log=case.log(f"c-{label}"))
        total += result.seconds
        if not result.ok:
            return common.RunResult(total, result.returncode, result.tail)
    return common.RunResult(total, 0, "")


def prepare(case: Case) -> bool:
    """Seed and build once (untimed); warm mage-dbt and the peers up, or record why they are not
    available."""
    duckdb_file = case.project / ".mage_dbt" / "bench.duckdb"
    duckdb_file.unlink(missing_ok=True)
    result = common.run_timed(dbt_cmd(case, "build"), cwd=case.project, env=case.env,
                              log=case.log("prepare"))
    if not result.ok:
        case.errors["a"] = result.tail
        return False
    for variant in [v for v in case.variants if v in FLOW_VARIANTS]:
        warm = run_variant(case, variant, "warmup")
        if not warm.ok:
            case.errors[variant] = warm.tail
            case.variants.remove(variant)
    return True


def measure(case: Case, repeat: int) -> None:
    """Interleave the variants in every repetition, rotating their order to spread drift."""
    if not prepare(case):
        return
    for rep in range(repeat):
        order = case.variants[rep % len(case.variants):] + case.variants[:rep % len(case.variants)]
        for variant in order:
            if variant in case.errors:
                continue
            result = run_variant(case, variant, str(rep))
            print(f"  n={case.size} {case.target} rep {rep + 1}/{repeat} "
                  f"({variant}) {VARIANTS[variant]}: {result.seconds:.2f} s"
                  + ("" if result.ok else f"  FAILED (exit {result.returncode})"), flush=True)
            if result.ok:
                case.seconds.setdefault(variant, []).append(result.seconds)
                if result.peak_rss_mb is not None:
                    case.peak_rss.setdefault(variant, []).append(result.peak_rss_mb)
            else:
                case.errors[variant] = result.tail


def probe_mage() -> str | None:
    """None when `mage-dbt run` exists, else the tail of what went wrong."""
    result = common.run_timed([common.venv_exe("mage-dbt"), "run", "--help"],
                              cwd=common.REPO_ROOT, env=common.base_env(), timeout=120)
    return None if result.ok else (result.tail or f"exit {result.returncode}")


def case_env(project: Path, target: str, size: int, shared: dict[str, str]) -> dict[str, str]:
    env = common.base_env(**shared, MAGE_DBT_DATA_DIR=str(project / ".mage_dbt"),
                          DBT_PROFILES_DIR=str(project), MAGE_DBT_PG_SCHEMA=f"bench_n{size}")
    for key in ("DBT_PROJECT_DIR", "DBT_TARGET", "DBT_TARGET_PATH"):
        env.pop(key, None)
    if target == "duckdb":
        for key in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE"):
            env.pop(key, None)
    return env


def unavailable(variants: list[str]) -> dict[str, str]:
    """Why a mage-dbt or peer variant cannot run at all (then it is reported as n/a)."""
    problems: dict[str, str] = {}
    mage_problem = any(v in MAGE_EXECUTORS for v in variants) and probe_mage()
    peer_problem = any(v in peer.VARIANTS for v in variants) and peer.ensure_venv()
    for variant in variants:
        problem = mage_problem if variant in MAGE_EXECUTORS else peer_problem
        if variant in FLOW_VARIANTS and problem:
            problems[variant] = problem
    for problem in set(problems.values()):
        names = [v for v, p in problems.items() if p == problem]
        print(f"{', '.join(names)} not available, reported as n/a:\n{problem}\n")
    return problems


def run_benchmark(args: argparse.Namespace) -> list[Case]:
    problems = unavailable(args.variants)
    variants = [v for v in args.variants if v not in problems]
    with contextlib.ExitStack() as stack:
        shared: dict[str, str] = {}
        pg: dict[str, str] = {}
        flow_variants = [v for v in variants if v in FLOW_VARIANTS]
        if flow_variants:
            print(f"starting the Prefect server for {', '.join(flow_variants)} ...", flush=True)
            shared.update(stack.enter_context(common.prefect_server()))
        if "pg" in args.targets:
            pg = stack.enter_context(common.postgres_database(f"mage_dbt_bench_{os.getpid()}"))
        cases = []
        for size in args.sizes:
            project = common.WORK_DIR / f"dbt-n{size}"
            gen_project.generate(project, size)
            for target in args.targets:
                extra = {**shared, **(pg if target == "pg" else {})}
                wanted = [v for v in variants if v != "c" or size == BASELINE_SIZE]
                case = Case(size, target, project, case_env(project, target, size, extra), wanted)
                print(f"n={size} {target}: preparing (seed + untimed build) ...", flush=True)
                measure(case, args.repeat)
                cases.append(case)
    for case in cases:
        for variant, problem in problems.items():
            case.errors.setdefault(variant, problem)
    return cases


def report(cases: list[Case], args: argparse.Namespace) -> None:
    print(f"\nmedians of {args.repeat} run(s); execution date {EXECUTION_DATE}")
    common.print_table(HEADERS, [case.row() for case in cases], left=2)
    if any(v in args.variants for v in peer.VARIANTS):
        print(f"\nprefect-dbt {peer.PREFECT_DBT_VERSION} peers (issue 18 target: <= 0.60 x the faster of p1 and p2, "
              "for `mage-dbt run` as a user runs it: w, the default executor on Postgres)")
        common.print_table(peer.HEADERS, [peer.row(case.summary()) for case in cases], left=2)
    for case in cases:
        cpu = case.summary()["server_cpu_median"]
        if cpu:
            print(f"Prefect server CPU per run (median), n={case.size} {case.target}: "
                  + ", ".join(f"{v} {common.fmt(c)} s" for v, c in cpu.items()))
    for case in cases:
        rss = case.summary()["peak_rss_mb_median"]
        if rss:
            base = rss.get("a")
            print(f"Peak RSS per run (median MB, every process of the run, the Prefect server excluded), "
                  f"n={case.size} {case.target}: " + ", ".join(
                      f"{v} {common.fmt(m, 0)}" + (f" ({common.fmt(common.ratio(m, base))} x a)" if base and v != "a" else "")
                      for v, m in rss.items()))
    for case in cases:
        for variant, tail in case.errors.items():
            first = tail.strip().splitlines()[-1] if tail.strip() else "(no output)"
            print(f"n/a: n={case.size} {case.target} ({variant}) {VARIANTS[variant]}: {first}")
    path = common.write_results("bench_dbt", {
        "execution_date": EXECUTION_DATE, "repeat": args.repeat, "variants": VARIANTS,
        "dbt_version": dbt_version(), "prefect_dbt_version": (
            peer.PREFECT_DBT_VERSION if any(v in args.variants for v in peer.VARIANTS) else None),
        "cases": [case.summary() for case in cases],
    })
    print(f"results: {path.relative_to(common.REPO_ROOT)}")


def dbt_version() -> str | None:
    try:
        from importlib.metadata import version
        return version("dbt-core")
    except Exception:  # the benchmark runs fine without knowing it
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200", help="model counts (default 50,200)")
    parser.add_argument("--targets", default="duckdb,pg", help="profile targets (duckdb,pg)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per variant (default 3)")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help=f"subset of {','.join(VARIANTS)} (default {DEFAULT_VARIANTS})")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.targets = [t for t in args.targets.split(",") if t]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = set(args.targets) - {"duckdb", "pg"} | set(args.variants) - set(VARIANTS)
    if unknown or args.repeat < 1:
        parser.error(f"unknown target/variant or bad --repeat: {sorted(unknown) or args.repeat}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report(run_benchmark(args), args)


if __name__ == "__main__":
    main()
