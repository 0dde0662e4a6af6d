"""Benchmark of issue 3: time and peak memory to load a 2,000-model dbt manifest into blocks.

A 2,000-model project (gen_project.py) is parsed ONCE with `dbt parse`; then every measurement runs
in a fresh Python process (mage_dbt and dbt modules imported before the clock starts):

  json.load          raw `json.load` of manifest.json — the reference floor;
  cold               manifest.json -> node index -> blocks (no mage_dbt cache);
  cached             mage_dbt's on-disk manifest cache (filled once, untimed) -> blocks;
  cached, in-process the second call in the same process (the in-memory cache) -> blocks;
  cached + dbt obj   cached, plus unpickling dbt's Manifest object that `dbtRunner` reuses.

Time is the median of --repeat runs; memory is the tracemalloc peak of the call (one extra run per
row, traced) and the process's peak RSS (getrusage maxrss, imports included). Targets of issue 3:
cold <= 1 s, cached <= 0.1 s.

    .venv/bin/python bench/bench_manifest.py [--models 2000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import common
import gen_project

MODES = {
    "json": ("json.load(manifest.json)", None),
    "cold": ("cold: manifest.json -> blocks", 1.0),
    "cached": ("cached (disk) -> blocks", 0.1),
    "memory": ("cached (in-process) -> blocks", 0.1),
    "dbt_object": ("cached + dbt Manifest object", None),
}
TARGET = "duckdb"


# --- the measured calls (adjust here when the loader API changes) -------------------------------

def import_loader() -> None:
    """Import everything the measured calls need, outside the timed region.

    dbt itself counts as imported: every mage_dbt process that loads a manifest also runs dbt, and
    the loader imports dbt lazily (its version is part of the cache key; unpickling dbt's Manifest
    needs dbt's node classes).
    """
    import dbt.contracts.graph.manifest  # noqa: F401
    import dbt.version  # noqa: F401
    import mage_dbt.blocks.block  # noqa: F401
    import mage_dbt.dbt.manifest  # noqa: F401
    import mage_dbt.dbt.nodes  # noqa: F401


def load_blocks(project_dir: Path, profiles_dir: Path, target: str, *, source: str = "cache",
                with_dbt_manifest: bool = False) -> dict:
    """Load the project's manifest into mage_dbt blocks; `source` is "manifest.json" or "cache"."""
    from mage_dbt.blocks.block import DbtBlockTranslator
    from mage_dbt.dbt.manifest import DbtProjectRef, load_manifest, load_manifest_json
    from mage_dbt.dbt.nodes import block_nodes

    if source == "manifest.json":
        nodes = load_manifest_json(project_dir / "target" / "manifest.json")
    else:
        ref = DbtProjectRef(name=project_dir.name, project_dir=project_dir, profiles_dir=profiles_dir,
                            data_dir=Path(os.environ["MAGE_DBT_DATA_DIR"]), target=target)
        loaded = load_manifest(ref)
        if with_dbt_manifest:
            loaded.dbt_manifest  # noqa: B018 — the lazy unpickle is what is measured
        nodes = loaded.nodes
    return DbtBlockTranslator().blocks(block_nodes(nodes.values()), project_dir.name)


def load_json(project_dir: Path) -> dict:
    with open(project_dir / "target" / "manifest.json", "rb") as handle:
        return json.load(handle)


def measured_call(mode: str, project_dir: Path, profiles_dir: Path):
    """The zero-argument call a measurement process times for `mode`."""
    if mode == "json":
        return lambda: load_json(project_dir)
    import_loader()
    if mode == "cold":
        return lambda: load_blocks(project_dir, profiles_dir, TARGET, source="manifest.json")
    if mode == "memory":
        load_blocks(project_dir, profiles_dir, TARGET)  # first call fills the in-process cache
    return lambda: load_blocks(project_dir, profiles_dir, TARGET,
                               with_dbt_manifest=mode == "dbt_object")


# --- one measurement, in the child process ------------------------------------------------------

def maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure_here(mode: str, project_dir: Path, profiles_dir: Path, trace: bool) -> dict:
    """Run in a fresh process: time one call (or trace its allocations) and return the figures."""
    try:
        call = measured_call(mode, project_dir, profiles_dir)
    except ImportError as exc:
        return {"error": f"loader not importable: {exc}"}
    rss_before = maxrss_mib()
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    items = len(result["nodes"]) if mode == "json" else len(result)
    out = {"seconds": seconds, "items": items, "maxrss_mib": maxrss_mib(),
           "maxrss_growth_mib": maxrss_mib() - rss_before}
    if trace:
        out["traced_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return out


def measure_in_child(mode: str, project: Path, env: dict[str, str], trace: bool = False) -> dict:
    """One fresh interpreter per measurement; its last stdout line is the JSON result."""
    cmd = [sys.executable, __file__, "--measure", mode, "--project-dir", str(project)]
    if trace:
        cmd.append("--trace")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": common.tail_of(proc.stderr or proc.stdout, 8) or f"exit {proc.returncode}"}
    return json.loads(lines[-1])


# --- the benchmark, in the parent process -------------------------------------------------------

def prepare(models: int, reuse: bool) -> tuple[Path, dict[str, str], float | None]:
    """Generate the project and parse it once; return it, the children's env and parse seconds."""
    project = common.WORK_DIR / f"manifest-n{models}"
    env = common.base_env(MAGE_DBT_DATA_DIR=str(project / ".mage_dbt"),
                          DBT_PROFILES_DIR=str(project))
    dbt_dir = project / "dbt_projects" / gen_project.PROJECT_NAME
    if reuse and (dbt_dir / "target" / "manifest.json").is_file():
        return project, env, None
    gen_project.generate(project, models)
    cmd = [common.venv_exe("dbt"), "parse", "--profiles-dir", str(project),
           "--project-dir", str(dbt_dir), "--target", TARGET]
    print(f"dbt parse of {models} models (once) ...", flush=True)
    result = common.run_timed(cmd, cwd=project, env=env, log=project / "dbt-parse.log")
    if not result.ok:
        raise SystemExit(f"dbt parse failed:\n{result.tail}")
    return project, env, result.seconds


def run_benchmark(models: int, repeat: int, reuse: bool) -> dict:
    project, env, parse_seconds = prepare(models, reuse)
    dbt_dir = project / "dbt_projects" / gen_project.PROJECT_NAME
    shutil.rmtree(project / ".mage_dbt", ignore_errors=True)  # mage_dbt's caches: start empty
    (project / ".mage_dbt").mkdir()
    fill = measure_in_child("cached", dbt_dir, env)  # a cache miss: mage_dbt parses once
    rows: dict[str, dict] = {mode: {"seconds": []} for mode in MODES}
    for rep in range(repeat):
        for mode in MODES:
            result = measure_in_child(mode, dbt_dir, env)
            if "error" in result:
                rows[mode]["error"] = result["error"]
                continue
            rows[mode]["seconds"].append(result["seconds"])
            rows[mode]["maxrss_mib"] = result["maxrss_mib"]
            rows[mode]["items"] = result["items"]
        print(f"  rep {rep + 1}/{repeat} done", flush=True)
    for mode in MODES:
        if "error" not in rows[mode]:
            traced = measure_in_child(mode, dbt_dir, env, trace=True)
            rows[mode]["traced_peak_mib"] = traced.get("traced_peak_mib")
    return {"models": models, "repeat": repeat, "dbt_parse_seconds": parse_seconds,
            "cache_fill": fill, "rows": rows,
            "manifest_json_mib": (dbt_dir / "target" / "manifest.json").stat().st_size / 2**20}


def report(results: dict) -> None:
    print(f"\n{results['models']}-model manifest ({results['manifest_json_mib']:.1f} MiB), "
          f"median of {results['repeat']} fresh processes")
    headers = ["load", "median (s)", "target (s)", "nodes/blocks", "traced peak (MiB)", "maxrss (MiB)"]
    table = []
    for mode, (label, target) in MODES.items():
        row = results["rows"][mode]
        table.append([label, common.fmt(common.median(row["seconds"]), 3),
                      common.fmt(target, 2) if target else "", str(row.get("items", "n/a")),
                      common.fmt(row.get("traced_peak_mib"), 1), common.fmt(row.get("maxrss_mib"), 0)])
        row["median"] = common.median(row["seconds"])
    common.print_table(headers, table)
    if results["dbt_parse_seconds"] is not None:
        print(f"dbt parse (CLI, once): {results['dbt_parse_seconds']:.1f} s")
    fill = results["cache_fill"]
    print(f"cache fill (mage_dbt cache miss, in-process parse, once): {common.fmt(fill.get('seconds'), 1)} s")
    for mode, row in results["rows"].items():
        if "error" in row:
            print(f"n/a: {MODES[mode][0]}: {row['error'].strip().splitlines()[-1]}")
    path = common.write_results("bench_manifest", results)
    print(f"results: {path.relative_to(common.REPO_ROOT)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=2000, help="model count (default 2000)")
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per row (default 5)")
    parser.add_argument("--reuse", action="store_true", help="reuse an already parsed project")
    parser.add_argument("--measure", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--project-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        profiles_dir = Path(os.environ.get("DBT_PROFILES_DIR", args.project_dir))
        print(json.dumps(measure_here(args.measure, args.project_dir, profiles_dir, args.trace)))
        return
    report(run_benchmark(args.models, args.repeat, args.reuse))


if __name__ == "__main__":
    main()
