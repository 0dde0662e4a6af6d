"""Benchmark of issue 17: what an unchanged second run costs with reuse, against a plain `dbt build`.

On Postgres, the generated project (gen_project.py, N models, default 200), side by side and
interleaved within every repetition:

  (a) `dbt build` — the plain CLI, every node built;
  (b) `mage-dbt run bench --reuse` — a second run of the unchanged project: every node's state key
      matches its last build, so every node is Reused and dbt is not invoked at all;
  (f) the floor: a new Python process running one empty Prefect flow against the same server
      (bench/empty_flow.py). Every mage-dbt run is a Prefect flow run, so (b) cannot go below (f).

Before timing, the project is built once by dbt and once by `mage-dbt run --reuse` (untimed: the
second records the keys). Then, once: one staging model gets a real change and `mage-dbt run --reuse`
must run exactly that model and its downstream (counted from dbt's child_map and from the dbt
invocation log); the row checksums of every table after that reuse run must equal those after a
plain `dbt build` of the same code. Prints medians, the ratios b/a (target <= 0.10, stretch 0.05),
f/a and b/f, the Prefect server's CPU seconds per run of each variant, and the checks; writes bench/results/bench_reuse-*.json.

    .venv/bin/python bench/bench_reuse.py [--models 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path

import common
import gen_project

EXECUTION_DATE = "2024-01-15"
DBT_VARS = f"{{execution_date: {EXECUTION_DATE}}}"


def dbt_cmd(project: Path, command: str) -> list[str]:
    return [common.venv_exe("dbt"), command, "--vars", DBT_VARS, "--profiles-dir", str(project),
            "--project-dir", str(project / "dbt_projects" / gen_project.PROJECT_NAME), "--target", "pg"]


def mage_cmd() -> list[str]:
    return [common.venv_exe("mage-dbt"), "run", "bench", "--execution-date", EXECUTION_DATE, "--target", "pg",
            "--reuse"]


def floor_cmd() -> list[str]:
    return [common.venv_exe("python"), str(Path(__file__).with_name("empty_flow.py"))]


def checksums(env: dict[str, str], schema: str) -> dict[str, str]:
    """Table -> md5 of its rows in a fixed order (views included)."""
    import psycopg2

    conn = psycopg2.connect(host=env["PGHOST"], port=env["PGPORT"], user=env["PGUSER"], dbname=env["PGDATABASE"])
    try:
        with conn.cursor() as cur:
            cur.execute("select table_name from information_schema.tables where table_schema = %s", [schema])
            names = sorted(name for (name,) in cur.fetchall())
            out = {}
            for name in names:
                cur.execute(f'select count(*), md5(coalesce(string_agg(t::text, \'|\' order by t::text), \'\')) '
                            f'from "{schema}"."{name}" as t')
                count, digest = cur.fetchone()
                out[name] = f"{count}:{digest}"
            return out
    finally:
        conn.close()


def builds_since(project: Path, since: int) -> list[dict]:
    log = project / ".mage_dbt" / "logs" / "dbt_invocations.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return [r for r in records[since:] if r["command"] in ("build", "run")]


def invocation_count(project: Path) -> int:
    log = project / ".mage_dbt" / "logs" / "dbt_invocations.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def downstream_nodes(manifest: Path, unique_id: str) -> set[str]:
    child_map = json.loads(manifest.read_text())["child_map"]
    found, todo = set(), [unique_id]
    while todo:
        uid = todo.pop()
        if uid not in found:
            found.add(uid)
            todo.extend(child_map.get(uid, ()))
    return found


def run(args: argparse.Namespace) -> dict:
    project = common.WORK_DIR / f"reuse-n{args.models}"
    shape = gen_project.generate(project, args.models)
    logs = project / "bench-logs"
    results: dict = {"models": args.models, "repeat": args.repeat, "a": [], "b": [], "f": [], "server_cpu": {}, "errors": {}}
    with contextlib.ExitStack() as stack:
        print("starting the Prefect server ...", flush=True)
        shared = stack.enter_context(common.prefect_server())
        pg = stack.enter_context(common.postgres_database(f"mage_dbt_bench_reuse_{os.getpid()}"))
        schema = f"bench_n{args.models}"
        env = common.base_env(**shared, **pg, MAGE_DBT_DATA_DIR=str(project / ".mage_dbt"),
                              DBT_PROFILES_DIR=str(project), MAGE_DBT_PG_SCHEMA=schema)
        print(f"n={args.models}: preparing (dbt build, then a first mage-dbt run --reuse, untimed) ...", flush=True)
        for label, cmd in (("prepare-dbt", dbt_cmd(project, "build")), ("prepare-mage", mage_cmd())):
            result = common.run_timed(cmd, cwd=project, env=env, log=logs / f"{label}.log")
            if not result.ok:
                results["errors"][label] = result.tail
                print(f"{label} failed:\n{result.tail}")
                return results
        for rep in range(args.repeat):
            for variant in (("a", "b", "f") if rep % 2 == 0 else ("f", "b", "a")):
                before = invocation_count(project)
                cmd = {"a": dbt_cmd(project, "build"), "b": mage_cmd(), "f": floor_cmd()}[variant]
                cpu = common.server_cpu_seconds()
                result = common.run_timed(cmd, cwd=project, env=env, log=logs / f"{variant}-{rep}.log")
                results["server_cpu"].setdefault(variant, []).append(round(common.server_cpu_seconds() - cpu, 3))
                extra = ""
                if variant == "b":
                    extra = f", dbt invocations: {len(builds_since(project, before))}"
                label = {"a": "dbt build", "b": "mage-dbt run --reuse", "f": "empty Prefect flow"}[variant]
                print(f"  rep {rep + 1}/{args.repeat} ({variant}) {label}: "
                      f"{result.seconds:.2f} s{extra}" + ("" if result.ok else f"  FAILED (exit {result.returncode})"),
                      flush=True)
                if result.ok:
                    results[variant].append(result.seconds)
                else:
                    results["errors"][variant] = result.tail
        results["changed"] = change_one_staging_model(project, env, schema, shape, logs)
    return results


def change_one_staging_model(project: Path, env: dict, schema: str, shape, logs: Path) -> dict:
    """Change one staging model; the reuse run must build exactly it and its downstream, and leave
    the same tables as a plain dbt build of the changed project."""
    name = shape.staging[0]
    path = project / "dbt_projects" / gen_project.PROJECT_NAME / "models" / "staging" / f"{name}.sql"
    path.write_text(path.read_text().replace("select event_id,", "select event_id, 1 as revision,", 1))
    before = invocation_count(project)
    result = common.run_timed(mage_cmd(), cwd=project, env=env, log=logs / "changed-mage.log")
    builds = builds_since(project, before)
    manifest = max((project / ".mage_dbt" / "manifest_cache").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    expected = downstream_nodes(manifest, f"model.{gen_project.PROJECT_NAME}.{name}")
    after_reuse = checksums(env, schema)
    plain = common.run_timed(dbt_cmd(project, "build"), cwd=project, env=env, log=logs / "changed-dbt.log")
    after_build = checksums(env, schema)
    return {
        "model": name, "ok": result.ok and plain.ok, "seconds": round(result.seconds, 3),
        "expected_nodes": len(expected), "built_nodes": sum(b.get("nodes") or 0 for b in builds),
        "invocations": len(builds), "tables": len(after_build),
        "tables_equal": after_reuse == after_build,
        "differing_tables": sorted(t for t in after_build if after_reuse.get(t) != after_build[t])[:10],
    }


def report(results: dict) -> None:
    a, b, f = common.median(results["a"]), common.median(results["b"]), common.median(results.get("f", []))
    print(f"\nN={results['models']} on Postgres, medians of {len(results['a'])}/{len(results['b'])} run(s); "
          f"execution date {EXECUTION_DATE}")
    common.print_table(["variant", "median (s)", "runs (s)"], [
        ["a dbt build", common.fmt(a), " ".join(f"{s:.2f}" for s in results["a"])],
        ["b mage-dbt run --reuse (unchanged)", common.fmt(b), " ".join(f"{s:.2f}" for s in results["b"])],
        ["f empty Prefect flow (the floor)", common.fmt(f), " ".join(f"{s:.2f}" for s in results.get("f", []))],
    ])
    ratio = common.ratio(b, a)
    print(f"b/a = {common.fmt(ratio, 3)} (target <= 0.10, stretch <= 0.05); f/a = {common.fmt(common.ratio(f, a), 3)} "
          f"(no run recorded as a Prefect flow run costs less); b/f = {common.fmt(common.ratio(b, f), 2)}")
    cpu = {v: common.median(c) for v, c in results.get("server_cpu", {}).items()}
    if cpu:
        print("Prefect server CPU per run (median): " + ", ".join(f"{v} {common.fmt(c)} s" for v, c in sorted(cpu.items())))
    changed = results.get("changed")
    if changed:
        print(f"changed {changed['model']}: built {changed['built_nodes']} node(s) in {changed['invocations']} "
              f"invocation(s), expected {changed['expected_nodes']} (it and its downstream); "
              f"{changed['tables']} tables equal after reuse run and plain dbt build: {changed['tables_equal']}"
              + (f" (differ: {changed['differing_tables']})" if not changed["tables_equal"] else ""))
    for key, tail in results["errors"].items():
        print(f"error ({key}): {tail.strip().splitlines()[-1] if tail.strip() else '(no output)'}")
    path = common.write_results("bench_reuse", {**results, "median_a": a, "median_b": b, "median_f": f,
                                                    "ratio_b_a": ratio, "ratio_f_a": common.ratio(f, a)})
    print(f"results: {path.relative_to(common.REPO_ROOT)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200, help="model count (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per variant (default 3)")
    report(run(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
