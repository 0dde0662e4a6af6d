"""Generate a complete mage_dbt project with a synthetic dbt project of N models, for the benchmarks.

The generated folder is a working mage_dbt project: `mage_dbt.yaml`, `profiles.yml` (profile
`bench`, targets `duckdb` and `pg`), `dbt_projects/bench/` and the pipeline `flows/bench.yaml`
(`dbt build` of every node). The dbt project has one seed of events over 30 days and N models:
~40 % staging views, ~40 % incremental facts that rebuild one day (`var('execution_date')`,
delete+insert by date), ~20 % mart tables; each fact reads 1-3 staging models, each mart 2-4 facts,
and a few models carry a not_null test. The SQL is plain enough to run unchanged on DuckDB and
Postgres. Output is deterministic for a given N.

    .venv/bin/python bench/gen_project.py DEST --models 200
"""

from __future__ import annotations

import argparse
import random
import shutil
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_NAME = "bench"
DEFAULT_EXECUTION_DATE = "2024-01-15"
FIRST_DAY = date(2024, 1, 1)
DAYS = 30
EVENT_TYPES = ("view", "click", "signup", "purchase", "refund")

PROFILES_YML = """\
# Connection settings of the generated benchmark project (the single source of warehouse settings).
bench:
  target: duckdb
  outputs:
    duckdb:
      type: duckdb
      path: "{{ env_var('MAGE_DBT_DATA_DIR') }}/bench.duckdb"
      threads: 4
    pg:
      type: postgres
      host: "{{ env_var('PGHOST', '127.0.0.1') }}"
      port: "{{ env_var('PGPORT', '5432') | as_number }}"
      user: "{{ env_var('PGUSER', 'postgres') }}"
      password: "{{ env_var('PGPASSWORD', '') }}"
      dbname: "{{ env_var('PGDATABASE', 'postgres') }}"
      schema: "{{ env_var('MAGE_DBT_PG_SCHEMA', 'bench') }}"
      threads: 4
"""

FLOW_YAML = """\
description: all models of the generated benchmark project
dbt:
  project: bench
  select: ["*"]      # dbt selector syntax
  command: build
"""

# `execution_date` may arrive as a date (YAML `--vars`) or an ISO timestamp string (mage_dbt):
# keep the day part so the same SQL works for both, on both warehouses.
EXECUTION_DAY_MACRO = """\
{% macro execution_day() -%}
cast('{{ (var("execution_date") | string)[:10] }}' as date)
{%- endmacro %}
"""

FALLBACK_SETTINGS = {
    "dbt_projects_dir": "dbt_projects",
    "default_dbt_project": PROJECT_NAME,
    "profiles_dir": ".",
    "data_dir": ".mage_dbt",
    "output_retention_days": 14,
}


@dataclass
class ProjectShape:
    """The DAG of a generated project: model name -> names of the models it reads."""

    staging: list[str] = field(default_factory=list)
    facts: dict[str, list[str]] = field(default_factory=dict)
    marts: dict[str, list[str]] = field(default_factory=dict)
    tested: list[str] = field(default_factory=list)

    @property
    def n_models(self) -> int:
        return len(self.staging) + len(self.facts) + len(self.marts)


def plan_shape(n_models: int, rng: random.Random) -> ProjectShape:
    """Split N models into staging/facts/marts and draw their dependencies."""
    if n_models < 5:
        raise ValueError("need at least 5 models")
    n_staging = round(n_models * 0.4)
    n_marts = max(1, round(n_models * 0.2))
    n_facts = n_models - n_staging - n_marts
    shape = ProjectShape(staging=[f"stg_events_{i:04d}" for i in range(n_staging)])
    for i in range(n_facts):
        k = min(rng.randint(1, 3), n_staging)
        shape.facts[f"fct_daily_{i:04d}"] = sorted(rng.sample(shape.staging, k))
    fact_names = list(shape.facts)
    for i in range(n_marts):
        k = min(rng.randint(2, 4), n_facts)
        shape.marts[f"mart_users_{i:04d}"] = sorted(rng.sample(fact_names, k))
    shape.tested = [shape.staging[0], fact_names[0], next(iter(shape.marts))]
    return shape


def seed_csv(rows: int, rng: random.Random) -> str:
    """Events over 30 days: id, user, type, amount, date."""
    lines = ["event_id,user_id,event_type,amount,event_date"]
    for event_id in range(1, rows + 1):
        day = FIRST_DAY + timedelta(days=rng.randrange(DAYS))
        amount = f"{rng.uniform(1, 500):.2f}"
        lines.append(f"{event_id},{rng.randint(1, 40)},{rng.choice(EVENT_TYPES)},{amount},{day}")
    return "\n".join(lines) + "\n"


def staging_sql(index: int) -> str:
    modulus = 2 + index % 3
    return (
        "select event_id, user_id, event_type, amount * "
        f"{1 + index % 7} as amount, event_date\n"
        "from {{ ref('events') }}\n"
        f"where mod(user_id, {modulus}) <> {index % modulus}\n"
    )


def union_of(models: list[str], columns: str) -> str:
    return "\n    union all\n".join(
        f"    select {columns} from {{{{ ref('{name}') }}}}" for name in models
    )


def fact_sql(upstream: list[str]) -> str:
    return (
        "{{ config(materialized='incremental', incremental_strategy='delete+insert',"
        " unique_key='event_date') }}\n"
        "with src as (\n"
        f"{union_of(upstream, 'event_id, user_id, event_type, amount, event_date')}\n"
        ")\n"
        "select event_date, user_id, count(*) as n_events, sum(amount) as amount\n"
        "from src\n"
        "where event_date = {{ execution_day() }}\n"
        "group by event_date, user_id\n"
    )


def mart_sql(upstream: list[str]) -> str:
    return (
        "select user_id, sum(n_events) as n_events, sum(amount) as amount,"
        " max(event_date) as last_event_date\n"
        "from (\n"
        f"{union_of(upstream, 'user_id, n_events, amount, event_date')}\n"
        ") as facts\n"
        "group by user_id\n"
    )


def dbt_project_yml() -> dict:
    return {
        "name": PROJECT_NAME,
        "version": "1.0.0",
        "config-version": 2,
        "profile": PROJECT_NAME,
        "model-paths": ["models"],
        "seed-paths": ["seeds"],
        "macro-paths": ["macros"],
        "vars": {"execution_date": DEFAULT_EXECUTION_DATE},
        "seeds": {PROJECT_NAME: {"events": {"+column_types": {
            "event_id": "integer", "user_id": "integer", "event_type": "varchar(16)",
            "amount": "numeric(12,2)", "event_date": "date",
        }}}},
        "models": {PROJECT_NAME: {
            "staging": {"+materialized": "view"},
            "facts": {"+materialized": "incremental"},
            "marts": {"+materialized": "table"},
        }},
    }


def schema_yml(shape: ProjectShape) -> dict:
    column = {"stg": "event_id", "fct": "event_date", "mart": "user_id"}
    models = [
        {"name": name, "columns": [{"name": column[name.split("_")[0]], "data_tests": ["not_null"]}]}
        for name in shape.tested
    ]
    return {"version": 2, "models": models}


def settings_yml() -> dict:
    """The keys of the repository's mage_dbt.yaml, pointed at the bench dbt project."""
    source = REPO_ROOT / "mage_dbt.yaml"
    settings = dict(yaml.safe_load(source.read_text()) or {}) if source.exists() else {}
    settings.update(FALLBACK_SETTINGS)
    return settings


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_yaml(path: Path, data: dict) -> None:
    write(path, yaml.safe_dump(data, sort_keys=False))


def write_dbt_project(dbt_dir: Path, shape: ProjectShape, rng: random.Random, seed_rows: int) -> None:
    write_yaml(dbt_dir / "dbt_project.yml", dbt_project_yml())
    write(dbt_dir / "seeds" / "events.csv", seed_csv(seed_rows, rng))
    write(dbt_dir / "macros" / "execution_day.sql", EXECUTION_DAY_MACRO)
    for index, name in enumerate(shape.staging):
        write(dbt_dir / "models" / "staging" / f"{name}.sql", staging_sql(index))
    for name, upstream in shape.facts.items():
        write(dbt_dir / "models" / "facts" / f"{name}.sql", fact_sql(upstream))
    for name, upstream in shape.marts.items():
        write(dbt_dir / "models" / "marts" / f"{name}.sql", mart_sql(upstream))
    write_yaml(dbt_dir / "models" / "schema.yml", schema_yml(shape))


def generate(dest: Path, n_models: int, seed_rows: int = 300, clean: bool = True) -> ProjectShape:
    """Write the mage_dbt project for `n_models` models into `dest`; return its DAG."""
    dest = Path(dest)
    if clean and dest.exists():
        shutil.rmtree(dest)
    rng = random.Random(n_models)
    shape = plan_shape(n_models, rng)
    settings = settings_yml()
    write(dest / "mage_dbt.yaml", "# Generated by bench/gen_project.py\n"
          + yaml.safe_dump(settings, sort_keys=False))
    write(dest / "profiles.yml", PROFILES_YML)
    write(dest / "flows" / "bench.yaml", FLOW_YAML)
    (dest / settings["data_dir"]).mkdir(parents=True, exist_ok=True)
    write_dbt_project(dest / settings["dbt_projects_dir"] / PROJECT_NAME, shape, rng, seed_rows)
    return shape


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder to (re)create")
    parser.add_argument("--models", type=int, default=50, help="number of models (default 50)")
    parser.add_argument("--seed-rows", type=int, default=300, help="rows of the events seed")
    args = parser.parse_args(argv)
    shape = generate(args.dest, args.models, args.seed_rows)
    print(f"{args.dest}: {len(shape.staging)} staging, {len(shape.facts)} facts, "
          f"{len(shape.marts)} marts, {len(shape.tested)} not_null tests")


if __name__ == "__main__":
    main()
