"""Benchmark of issue 15: a 30-day backfill of a set of microbatch models on Postgres.

A generated mage_dbt project (bench/.work/microbatch/project): a seed of 4,000 events over 40
days (10 past the default range, so writing outside the range shows in the checksums), two
staging views with `event_time`, and six microbatch models (`batch_size='day'`,
`begin='2024-01-01'`), four reading the staging views and two reading other microbatch models.
One fresh Postgres database (`mage_dbt_bench_mb_<pid>`, dropped at the end), one fresh
PREFECT_HOME and no PREFECT_API_URL (the embedded default). Untimed setup, once: the seed and the
staging views are loaded by a one-day `mage-dbt backfill` of a setup pipeline, which also starts
the local Prefect server and fills mage_dbt's manifest cache (the warm-up), and `dbt parse` warms
dbt's partial-parse files. Then `--repeat` repetitions, the variants interleaved (order rotating),
each starting from the same state (the microbatch models' tables dropped) and timed from process
start to exit:

  (a) ONE `dbt run --select <microbatch models> --event-time-start D1 --event-time-end Dn+1day`:
      every day's batch in one invocation (the floor);
  (b) `mage-dbt backfill mb --start D1 --end Dn`: what issue 15 makes one dbt invocation over the
      whole range, with a Prefect task run per batch; the default `dbt_executor: auto` runs dbt in a
      worker process started first thing (Postgres), so its import overlaps the CLI's start-up;
  (i) (b) with `dbt_executor: in_process` (MAGE_DBT_DBT_EXECUTOR=in_process, the default until
      2026-12-05): dbt in the CLI process;
  (c) the `dbt run --vars` loop: per day D, `dbt run --select <models> --vars '{execution_date: D}'
      --event-time-start D --event-time-end D+1day` (the day-by-day reference).

After every variant each microbatch table gets a row checksum (md5 of its rows as text, sorted);
the variants must end with identical tables, else the script says which differ and exits 1.
Prints medians, b/a (target <= 1.2) and c/b (target >= 10); writes bench/results/.

    .venv/bin/python bench/bench_microbatch.py [--days 30] [--repeat 3] [--variants a,b,c] [--dry]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from datetime import date, timedelta
from pathlib import Path

import common
import gen_project as gen
from bench_embedded import environments as embedded_environments

VARIANTS = {"a": "dbt run --event-time-start/end (1 call)", "b": "mage-dbt backfill",
            "i": "mage-dbt backfill, dbt_executor: in_process", "c": "dbt run --vars loop (1 call/day)"}
VARIANT_ENV = {"i": {"MAGE_DBT_DBT_EXECUTOR": "in_process"}}  # (i) is (b) with dbt in the CLI process
PIPELINE, SETUP_PIPELINE = "mb", "mb_setup"
SCHEMA = "mb"
FIRST_DAY = gen.FIRST_DAY  # 2024-01-01, also the models' `begin`
# The seed runs 10 days past the default 30-day range: a variant that writes batches outside the
# range (e.g. dbt's now-based batching) ends with different tables, and the checksums show it.
SEED_DAYS = 40
SEED_ROWS = 4000
WORK = common.WORK_DIR / "microbatch"

# --- the generated project -------------------------------------------------------------------

STAGING = {
    "stg_events": "select event_id, user_id, event_type, amount, event_ts\nfrom {{ ref('events') }}\n",
    "stg_purchases": (
        "select event_id, user_id,\n"
        "    case when event_type = 'refund' then -amount else amount end as amount, event_ts\n"
        "from {{ ref('events') }}\nwhere event_type in ('purchase', 'refund')\n"),
}
# name -> (event_time column, unique_key, SQL). Two read other microbatch models (dbt filters those by
# batch too). dbt-postgres runs a microbatch batch as a MERGE on `unique_key` (it refuses the model
# without one), so every model has one.
MICROBATCH = {
    "mb_events_daily": ("event_date", ["event_date", "event_type"], (
        "select cast(event_ts as date) as event_date, event_type, count(*) as n_events,"
        " sum(amount) as amount\nfrom {{ ref('stg_events') }}\ngroup by 1, 2\n")),
    "mb_users_daily": ("event_date", ["event_date", "user_id"], (
        "select cast(event_ts as date) as event_date, user_id, count(*) as n_events,"
        " sum(amount) as amount\nfrom {{ ref('stg_events') }}\ngroup by 1, 2\n")),
    "mb_events_hourly": ("event_hour", ["event_hour"], (
        "select date_trunc('hour', event_ts) as event_hour, count(*) as n_events,"
        " count(distinct user_id) as n_users\nfrom {{ ref('stg_events') }}\ngroup by 1\n")),
    "mb_purchases_daily": ("event_date", ["event_date"], (
        "select cast(event_ts as date) as event_date, count(*) as n_purchases,"
        " sum(amount) as revenue\nfrom {{ ref('stg_purchases') }}\ngroup by 1\n")),
    "mb_active_users_daily": ("event_date", ["event_date"], (
        "select event_date, count(*) as active_users, sum(n_events) as n_events,"
        " max(amount) as top_user_amount\nfrom {{ ref('mb_users_daily') }}\ngroup by 1\n")),
    "mb_purchase_share_daily": ("event_date", ["event_date"], (
        # CTEs: dbt swaps a ref() to a microbatch input for an aliased subquery (no `as x` after it)
        "with e as (select event_date, sum(n_events) as n_events from {{ ref('mb_events_daily') }}"
        " group by 1),\n"
        "p as (select event_date, revenue from {{ ref('mb_purchases_daily') }})\n"
        "select e.event_date, e.n_events, coalesce(p.revenue, 0) as revenue,\n"
        "    cast(round(coalesce(p.revenue, 0) / e.n_events, 4) as numeric(14, 4)) as revenue_per_event\n"
        "from e left join p on p.event_date = e.event_date\n")),
}
MODELS = tuple(MICROBATCH)


def events_csv(rng: random.Random) -> str:
    """SEED_ROWS events over SEED_DAYS days from FIRST_DAY, second resolution, deterministic."""
    lines = ["event_id,user_id,event_type,amount,event_ts"]
    for event_id in range(1, SEED_ROWS + 1):
        day = FIRST_DAY + timedelta(days=rng.randrange(SEED_DAYS))
        ts = f"{day} {rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"
        lines.append(f"{event_id},{rng.randint(1, 60)},{rng.choice(gen.EVENT_TYPES)},"
                     f"{rng.uniform(1, 500):.2f},{ts}")
    return "\n".join(lines) + "\n"


def microbatch_sql(event_time: str, unique_key: list[str], body: str) -> str:
    return ("{{ config(materialized='incremental', incremental_strategy='microbatch',"
            f" event_time='{event_time}', batch_size='day', begin='{FIRST_DAY}', unique_key={unique_key!r})"
            f" }}}}\n{body}")


def generate(dest: Path) -> Path:
    """The mage_dbt project: gen_project's settings and profiles, this benchmark's dbt project."""
    shutil.rmtree(dest, ignore_errors=True)
    settings = gen.settings_yml()
    gen.write(dest / "mage_dbt.yaml", "# Generated by bench/bench_microbatch.py\n"
              + gen.yaml.safe_dump(settings, sort_keys=False))
    gen.write(dest / "profiles.yml", gen.PROFILES_YML)
    (dest / settings["data_dir"]).mkdir(parents=True, exist_ok=True)
    gen.write_yaml(dest / "flows" / f"{PIPELINE}.yaml", {
        "description": "the microbatch models of the benchmark (issue 15)",
        "dbt": {"project": gen.PROJECT_NAME, "select": list(MODELS), "command": "run"}})
    gen.write_yaml(dest / "flows" / f"{SETUP_PIPELINE}.yaml", {
        "description": "seed and staging views (untimed setup and warm-up)",
        "dbt": {"project": gen.PROJECT_NAME, "select": [f"+{name}" for name in STAGING], "command": "build"}})
    dbt_dir = dest / settings["dbt_projects_dir"] / gen.PROJECT_NAME
    project = {k: v for k, v in gen.dbt_project_yml().items() if k != "macro-paths"}
    project["seeds"] = {gen.PROJECT_NAME: {"events": {"+column_types": {
        "event_id": "integer", "user_id": "integer", "event_type": "varchar(16)",
        "amount": "numeric(12,2)", "event_ts": "timestamp"}}}}
    project["models"] = {gen.PROJECT_NAME: {"staging": {"+materialized": "view"}}}
    gen.write_yaml(dbt_dir / "dbt_project.yml", project)
    gen.write(dbt_dir / "seeds" / "events.csv", events_csv(random.Random(15)))
    for name, sql in STAGING.items():
        gen.write(dbt_dir / "models" / "staging" / f"{name}.sql",
                  "{{ config(event_time='event_ts') }}\n" + sql)
    for name, (event_time, unique_key, body) in MICROBATCH.items():
        gen.write(dbt_dir / "models" / "microbatch" / f"{name}.sql", microbatch_sql(event_time, unique_key, body))
    return dbt_dir


# --- the measured commands -------------------------------------------------------------------

def day_range(args: argparse.Namespace) -> list[date]:
    return [date.fromisoformat(args.start) + timedelta(days=n) for n in range(args.days)]


def commands(project: Path, dbt_dir: Path, days: list[date]) -> dict[str, list[list[str]]]:
    """Each variant as the list of processes it runs, one after the other."""
    def dbt_run(target_path: str) -> list[str]:
        return [common.venv_exe("dbt"), "run", "--select", *MODELS, "--project-dir", str(dbt_dir),
                "--profiles-dir", str(project), "--target", "pg", "--target-path", target_path]

    # (a) and (c) keep their own partial-parse files: (c)'s changing --vars must not make (a) re-parse.
    end = days[-1] + timedelta(days=1)
    return {
        "a": [[*dbt_run(plain_target("a")), "--event-time-start", str(days[0]), "--event-time-end", str(end)]],
        "b": [[common.venv_exe("mage-dbt"), "backfill", PIPELINE, "--start", str(days[0]),
               "--end", str(days[-1]), "--target", "pg"]],
        "i": [[common.venv_exe("mage-dbt"), "backfill", PIPELINE, "--start", str(days[0]),
               "--end", str(days[-1]), "--target", "pg"]],
        "c": [[*dbt_run(plain_target("c")), "--vars", f"{{execution_date: {day}}}",
               "--event-time-start", str(day), "--event-time-end", str(day + timedelta(days=1))]
              for day in days],
    }


def setup_commands(project: Path, dbt_dir: Path, day: date) -> list[list[str]]:
    """Untimed: seed + staging views by a one-day backfill (starts the local server: the warm-up),
    then `dbt parse` into (a)'s and (c)'s target paths."""
    parse = [common.venv_exe("dbt"), "parse", "--project-dir", str(dbt_dir), "--profiles-dir", str(project),
             "--target", "pg"]
    return [[common.venv_exe("mage-dbt"), "backfill", SETUP_PIPELINE, "--start", str(day), "--end", str(day),
             "--target", "pg"],
            [*parse, "--target-path", plain_target("a")], [*parse, "--target-path", plain_target("c")]]


def plain_target(variant: str) -> str:
    """(a)'s and (c)'s dbt target folder, outside the project: mage_dbt's manifest cache key hashes
    the dbt project's files, so artifacts written inside it (other than in `target/`) would make
    every mage-dbt run after a plain dbt run parse again."""
    return str(WORK / "plain-dbt-targets" / f"target-{variant}")


# --- the tables --------------------------------------------------------------------------------

def connect(pg: dict[str, str]):
    import psycopg2

    conn = psycopg2.connect(host=pg["PGHOST"], port=pg["PGPORT"], user=pg["PGUSER"], dbname=pg["PGDATABASE"],
                            password=os.environ.get("PGPASSWORD") or None)
    conn.autocommit = True
    return conn


def reset_tables(pg: dict[str, str]) -> None:
    """Drop the microbatch models' tables (and any dbt leftovers of them): every variant starts empty."""
    conn = connect(pg)
    try:
        with conn.cursor() as cur:
            cur.execute("select table_name from information_schema.tables where table_schema = %s"
                        " and table_name like 'mb\\_%%'", (SCHEMA,))
            for (name,) in cur.fetchall():
                cur.execute(f'drop table if exists "{SCHEMA}"."{name}" cascade')
    finally:
        conn.close()


def checksums(pg: dict[str, str]) -> dict[str, str]:
    """Per microbatch model: '<rows> rows md5 <first 12 hex>' of its rows as text, sorted; or 'missing'."""
    conn = connect(pg)
    out = {}
    try:
        with conn.cursor() as cur:
            for model in MODELS:
                cur.execute("select to_regclass(%s)", (f"{SCHEMA}.{model}",))
                if cur.fetchone()[0] is None:
                    out[model] = "missing"
                    continue
                cur.execute(f"select count(*), md5(coalesce(string_agg(t::text, '|' order by t::text), ''))"
                            f' from "{SCHEMA}"."{model}" as t')
                rows, digest = cur.fetchone()
                out[model] = f"{rows} rows md5 {digest[:12]}"
    finally:
        conn.close()
    return out


def dbt_invocations(project: Path) -> int:
    """`run`/`build` entries of mage_dbt's invocation log so far."""
    log = project / ".mage_dbt" / "logs" / "dbt_invocations.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return sum(1 for line in lines if line.strip() and json.loads(line)["command"] in ("run", "build"))


# --- the benchmark -------------------------------------------------------------------------------

def run_variant(variant: str, cmds: list[list[str]], *, project: Path, env: dict[str, str],
                logs: Path, rep: int) -> common.RunResult:
    """Run the variant's processes one after the other; seconds = their sum; stop at the first failure."""
    total = 0.0
    for n, cmd in enumerate(cmds):
        run = common.run_timed(cmd, cwd=project, env=env, log=logs / f"{variant}-{rep}-{n:02d}.log")
        total += run.seconds
        if not run.ok:
            return common.RunResult(total, run.returncode, run.tail)
    return common.RunResult(total, 0, "")


def run_benchmark(args: argparse.Namespace) -> dict:
    days = day_range(args)
    project = WORK / "project"
    dbt_dir = generate(project)
    logs = WORK / "bench-logs"
    shutil.rmtree(logs, ignore_errors=True)
    cmds = commands(project, dbt_dir, days)
    seconds: dict[str, list[float]] = {v: [] for v in args.variants}
    sums: dict[str, list[dict[str, str]]] = {v: [] for v in args.variants}
    errors: dict[str, str] = {}
    result: dict = {"seconds": seconds, "checksums": sums, "errors": errors, "invocations": {}}
    if args.dry:
        for variant in args.variants:
            shown = cmds[variant][:2]
            print(f"({variant}) {VARIANTS[variant]}: {len(cmds[variant])} process(es)")
            for cmd in shown:
                print("    " + " ".join(cmd))
        print(f"project generated in {project}; --dry: nothing run")
        return result
    home = Path(tempfile.mkdtemp(prefix="bench-microbatch-prefect-"))
    env = embedded_environments(project, home)["b"]
    try:
        with common.postgres_database(f"mage_dbt_bench_mb_{os.getpid()}") as pg:
            env = {**env, **pg, "MAGE_DBT_PG_SCHEMA": SCHEMA}
            print(f"Postgres database {pg['PGDATABASE']}, schema {SCHEMA}; PREFECT_HOME {home} (fresh), "
                  f"no PREFECT_API_URL; project {project}", flush=True)
            for n, cmd in enumerate(setup_commands(project, dbt_dir, days[0])):
                setup = common.run_timed(cmd, cwd=project, env=env, log=logs / f"setup-{n}.log")
                print(f"setup ({' '.join(cmd[1:3])}): {setup.seconds:.2f} s", flush=True)
                if not setup.ok:
                    raise SystemExit(f"setup failed (exit {setup.returncode}): {' '.join(cmd)}\n{setup.tail}")
            variants = list(args.variants)
            for rep in range(args.repeat):
                order = variants[rep % len(variants):] + variants[:rep % len(variants)]
                for variant in order:
                    if variant in errors:
                        continue
                    reset_tables(pg)
                    before = dbt_invocations(project)
                    run = run_variant(variant, cmds[variant], project=project, env={**env, **VARIANT_ENV.get(variant, {})},
                                      logs=logs, rep=rep)
                    if variant in ("b", "i"):
                        result["invocations"][variant] = dbt_invocations(project) - before
                    print(f"  rep {rep + 1}/{args.repeat} ({variant}) {VARIANTS[variant]}: {run.seconds:.2f} s"
                          + ("" if run.ok else f"  FAILED (exit {run.returncode})"), flush=True)
                    if run.ok:
                        seconds[variant].append(run.seconds)
                        sums[variant].append(checksums(pg))
                    else:
                        errors[variant] = run.tail
    finally:
        stop = common.run_timed([common.venv_exe("mage-dbt"), "server", "stop"], cwd=project, env=env,
                                log=logs / "server-stop.log")
        print(stop.tail.strip() or "(server stop said nothing)", flush=True)
        shutil.rmtree(home, ignore_errors=True)
    result["invocations"].update({"a": 1, "c": len(days)})
    return result


def compare(sums: dict[str, list[dict[str, str]]]) -> list[str]:
    """What differs: between repetitions of one variant, and between variants (vs the first one)."""
    problems = []
    finals = {}
    for variant, per_rep in sums.items():
        if not per_rep:
            continue
        finals[variant] = per_rep[0]
        for rep, other in enumerate(per_rep[1:], start=2):
            if other != per_rep[0]:
                problems.append(f"({variant}) rep {rep} differs from its rep 1")
    if finals:
        ref_variant, ref = next(iter(finals.items()))
        for variant, got in finals.items():
            for model in MODELS:
                if got[model] != ref[model]:
                    problems.append(f"{model}: ({ref_variant}) {ref[model]} vs ({variant}) {got[model]}")
    return problems


def report(result: dict, args: argparse.Namespace) -> int:
    days = day_range(args)
    seconds = result["seconds"]
    medians = {v: common.median(seconds.get(v, [])) for v in VARIANTS}
    ratios = {"b/a": common.ratio(medians["b"], medians["a"]), "c/b": common.ratio(medians["c"], medians["b"]),
              "c/a": common.ratio(medians["c"], medians["a"]), "i/a": common.ratio(medians["i"], medians["a"]),
              "c/i": common.ratio(medians["c"], medians["i"])}
    print(f"\nmedians of {args.repeat} run(s); {len(days)} days {days[0]}..{days[-1]}, {len(MODELS)} microbatch "
          f"models, Postgres, embedded default (no PREFECT_API_URL)")
    common.print_table(["variant", "median (s)", "dbt calls", "runs (s)"], [
        [f"({v}) {VARIANTS[v]}", common.fmt(medians[v]), str(result["invocations"].get(v, "n/a")),
         " ".join(f"{s:.2f}" for s in seconds.get(v, []))] for v in VARIANTS if v in args.variants])
    print(f"b/a = {common.fmt(ratios['b/a'])} (target <= 1.2)   c/b = {common.fmt(ratios['c/b'], 1)} "
          f"(target >= 10)   c/a = {common.fmt(ratios['c/a'], 1)}")
    if "i" in args.variants:
        print(f"with dbt_executor: in_process: i/a = {common.fmt(ratios['i/a'])}   c/i = {common.fmt(ratios['c/i'], 1)}")
    for variant, tail in result["errors"].items():
        last = tail.strip().splitlines()[-1] if tail.strip() else "(no output)"
        print(f"n/a: ({variant}) {VARIANTS[variant]}: {last}")
    measured = [v for v in args.variants if result["checksums"].get(v)]
    problems = compare(result["checksums"])
    identical = not problems and len(measured) > 0
    print(f"tables identical across {', '.join(f'({v})' for v in measured) or 'no variant'}: "
          f"{'yes' if identical else 'NO'}")
    if measured:
        ref = result["checksums"][measured[0]][0]
        for model in MODELS:
            print(f"  {model}: {ref[model]}")
    for problem in problems:
        print(f"  DIFFERS {problem}")
    path = common.write_results("bench_microbatch", {
        "days": [str(days[0]), str(days[-1])], "n_days": len(days), "models": MODELS, "repeat": args.repeat,
        "variants": {v: VARIANTS[v] for v in args.variants}, **result, "median": medians, "ratios": ratios,
        "tables_identical": identical, "differences": problems,
    })
    print(f"results: {path.relative_to(common.REPO_ROOT)}")
    return 0 if identical and not result["errors"] else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30, help=f"days to backfill (default 30; the seed covers {SEED_DAYS} from {FIRST_DAY})")
    parser.add_argument("--start", default=str(FIRST_DAY), help=f"first day (default {FIRST_DAY})")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per variant (default 3)")
    parser.add_argument("--variants", default="a,b,i,c", help="subset of a,b,i,c (default all)")
    parser.add_argument("--dry", action="store_true", help="generate the project, print the commands, run nothing")
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    if not args.variants or set(args.variants) - set(VARIANTS) or args.repeat < 1:
        parser.error("--variants must be a non-empty subset of a,b,i,c; --repeat >= 1")
    if not 1 <= args.days or date.fromisoformat(args.start) < FIRST_DAY:
        parser.error(f"--days >= 1 and --start on or after the models' begin ({FIRST_DAY})")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = run_benchmark(args)
    if not args.dry:
        sys.exit(report(result, args))


if __name__ == "__main__":
    main()
