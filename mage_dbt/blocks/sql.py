"""SQL blocks: a `.sql` file templated with jinja2, run on the dbt profile's target.

Template names: the run context (`execution_date` 'YYYY-MM-DD', `execution_ts`, `interval_start`,
`interval_end`, `full_refresh`, `vars`, `run_id`, `pipeline`, `target`), `var('name', default)`,
and `ref('model')` / `source('src', 'table')`, which render the node's real relation name from the
manifest. Block options in the pipeline file:

    dialect: postgres         the dialect the file is written in (default: the target's); sqlglot
                              transpiles it to the target's dialect (duckdb, postgres, bigquery)
    materialize: table|view   create the relation `schema.table` instead of returning rows
    table: name, schema: s    the relation to create (default: block name, target schema)
    check: column             fail the block unless the query returns rows and `column` is true
                              in every row (a reconciliation or data check)

Without `materialize` the output is the query's DataFrame (stored for downstream blocks); with it,
the created relation's name. Every file is rendered and parsed with sqlglot before the run (at
pipeline load): a template or syntax error names the block, file, line and column, and `ref()` to
a missing model fails there too. SQL runs as written when its dialect is the target's. Creating a
relation is one transaction on DuckDB and Postgres (drop + create: on error the old one stays) and
one `CREATE OR REPLACE` statement on BigQuery.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any, Mapping

import jinja2
import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, ParseError, TokenError, UnsupportedError

from mage_dbt.blocks.python import block_file, where
from mage_dbt.blocks.runners import BlockEnv, BlockOutcome
from mage_dbt.blocks.support import LazyWarehouse, Relation, Relations, block_target, dialect_of
from mage_dbt.errors import BlockError

MATERIALIZATIONS = ("table", "view")
TableKey = tuple[str, str]  # (schema, table), lower-cased


@dataclass(frozen=True)
class TargetInfo:
    """What compiling SQL needs to know about the target: dialect, default schema and database."""

    dialect: str
    schema: str
    database: str | None = None


@dataclass
class CompiledSql:
    """A rendered, parsed (and if needed transpiled) SQL block."""

    rendered: str
    sql: str  # what runs on the target
    expression: exp.Expression
    read_dialect: str
    target: TargetInfo
    used: dict[str, Any] = field(default_factory=dict)  # unique_id -> DbtNode from ref()/source()
    materialize: str | None = None
    relation: exp.Table | None = None  # what `materialize` creates
    check: str | None = None

    def reads(self) -> set[TableKey]:
        """(schema, table) of every table the query reads (CTE names excluded)."""
        ctes = {c.alias_or_name.lower() for c in self.expression.find_all(exp.CTE)}
        keys = set()
        for table in self.expression.find_all(exp.Table):
            if not table.name or (not table.db and table.name.lower() in ctes):
                continue
            keys.add(((table.db or self.target.schema).lower(), table.name.lower()))
        return keys

    def writes(self) -> set[TableKey]:
        if self.relation is None:
            return set()
        return {(self.relation.db.lower(), self.relation.name.lower())}

    def relation_sql(self) -> str:
        assert self.relation is not None
        return self.relation.sql(dialect=self.target.dialect)


def template_environment() -> jinja2.Environment:
    return jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)


class _PreflightVars(dict):
    """Vars at pre-flight: `--var` values are not known yet, so unknown names render as NULL."""

    def __missing__(self, key: str) -> str:
        return "NULL"

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        return self[key]


def render_sql(text: str, values: Mapping[str, Any], relations: Relations, label: str,
               *, preflight: bool = False) -> str:
    """Render the template; errors name the block, file and template line."""
    env = template_environment()
    variables = _PreflightVars(values.get("vars") or {}) if preflight else dict(values.get("vars") or {})

    def var(name: str, default: Any = None) -> Any:
        if name in variables or name in values:
            return variables[name] if name in variables else values[name]
        if default is not None or preflight:
            return "NULL" if default is None else default
        raise BlockError(f"var('{name}') is not set", hint="pass it with --var or the pipeline's vars:")

    try:
        template = env.from_string(text)
        return template.render({**values, "vars": variables, "var": var,
                                "ref": relations.ref, "source": relations.source})
    except jinja2.TemplateSyntaxError as exc:
        raise BlockError(f"{label}:{exc.lineno}: template syntax error: {exc.message}") from None
    except (BlockError, jinja2.UndefinedError, TypeError) as exc:
        line = next((f.lineno for f in reversed(traceback.extract_tb(exc.__traceback__))
                     if f.filename == "<template>"), None)
        at = f":{line}" if line else ""
        if isinstance(exc, BlockError):
            raise type(exc)(f"{label}{at}: {exc.message}", hint=exc.hint) from None
        raise BlockError(f"{label}{at}: template error: {exc}") from None


def parse_sql(rendered: str, dialect: str, label: str) -> exp.Expression:
    """One query, parsed with sqlglot; a syntax error names line and column."""
    try:
        statements = [s for s in sqlglot.parse(rendered, read=dialect) if s is not None]
    except ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        line, col = first.get("line"), first.get("col")
        raise BlockError(f"{label}: SQL syntax error at line {line}, column {col}: "
                         f"{first.get('description') or exc} (near '{first.get('highlight', '')}')",
                         hint=f"the SQL is read as {dialect}; set `dialect:` on the block if it is "
                              f"written in another one") from None
    except TokenError as exc:
        end = getattr(exc, "end", None) or len(rendered)
        line = rendered.count("\n", 0, end) + 1
        col = end - (rendered.rfind("\n", 0, end) + 1)
        raise BlockError(f"{label}: SQL syntax error at line {line}, column {col}: cannot tokenize "
                         f"(an unterminated string or quote?)") from None
    if len(statements) != 1:
        raise BlockError(f"{label}: a SQL block holds exactly one query, found {len(statements)} statements",
                         hint="split the statements into several blocks")
    if not isinstance(statements[0], exp.Query):
        raise BlockError(f"{label}: a SQL block holds one query (SELECT / WITH ...), "
                         f"not a {statements[0].key.upper()} statement",
                         hint="use `materialize: table|view` to create a relation from a query")
    return statements[0]


def transpile(expression: exp.Expression, target_dialect: str, label: str) -> str:
    try:
        return expression.sql(dialect=target_dialect, unsupported_level=ErrorLevel.RAISE)
    except UnsupportedError as exc:
        raise BlockError(f"{label}: the SQL cannot be translated to {target_dialect}: {exc}") from None


def compile_sql(text: str, *, spec: Any, label: str, target: TargetInfo, values: Mapping[str, Any],
                relations: Relations, preflight: bool = False) -> CompiledSql:
    """Render, parse and (when the block's dialect is not the target's) transpile a SQL block."""
    read = str(spec.option("dialect") or target.dialect).lower()
    if read not in sqlglot.Dialect.classes:
        raise BlockError(f"{label}: unknown dialect '{read}'", hint="e.g. postgres, duckdb, bigquery")
    materialize = spec.option("materialize")
    if materialize is not None and materialize not in MATERIALIZATIONS:
        raise BlockError(f"{label}: materialize must be one of {', '.join(MATERIALIZATIONS)}, not {materialize!r}")
    check = spec.option("check")
    if check is not None and materialize is not None:
        raise BlockError(f"{label}: `check:` applies to blocks returning rows, not to `materialize:`")
    rendered = render_sql(text, values, relations, label, preflight=preflight)
    expression = parse_sql(rendered, read, label)
    sql = rendered.strip().rstrip(";").strip() if read == target.dialect else transpile(expression, target.dialect, label)
    relation = None
    if materialize:
        schema = str(spec.option("schema") or target.schema)
        relation = exp.table_(str(spec.option("table") or spec.name), db=schema,
                              catalog=target.database, quoted=True)
    return CompiledSql(rendered=rendered, sql=sql, expression=expression, read_dialect=read,
                       target=target, used=dict(relations.used), materialize=materialize,
                       relation=relation, check=None if check is None else str(check))


def materialize_statements(compiled: CompiledSql, existing: str | None) -> list[str]:
    """The statements creating the relation; `existing` is 'table'/'view' when one is there."""
    dialect, kind = compiled.target.dialect, compiled.materialize.upper()
    relation = compiled.relation_sql()
    # A Postgres schema name cannot carry the database; DuckDB's and BigQuery's carry it.
    parts = [compiled.relation.catalog] if dialect != "postgres" and compiled.relation.catalog else []
    parts.append(compiled.relation.db)
    schema = ".".join(exp.to_identifier(p, quoted=True).sql(dialect=dialect) for p in parts)
    create_schema = f"CREATE SCHEMA IF NOT EXISTS {schema}"
    if dialect == "bigquery":
        return [create_schema, f"CREATE OR REPLACE {kind} {relation} AS (\n{compiled.sql}\n)"]
    statements = [create_schema]
    if existing:
        statements.append(f"DROP {existing.upper()} {relation}")
    statements.append(f"CREATE {kind} {relation} AS (\n{compiled.sql}\n)")
    return statements


# -- running ------------------------------------------------------------------------------------------
def target_info(target: Any) -> TargetInfo:
    return TargetInfo(dialect=dialect_of(target), schema=target.schema, database=target.database)


def compile_block(settings: Any, pipeline_name: str, spec: Any, *, target: TargetInfo,
                  values: Mapping[str, Any], nodes: Mapping[str, Any] | None, project: str | None,
                  preflight: bool) -> CompiledSql:
    path = block_file(settings, pipeline_name, spec, ".sql")
    label = where(settings, spec, path)
    return compile_sql(path.read_text(), spec=spec, label=label, target=target, values=values,
                       relations=Relations(nodes, project), preflight=preflight)


def run_sql_block(block: Any, env: BlockEnv) -> BlockOutcome:
    """Run the query (output: DataFrame) or create the relation (output: its name)."""
    target = block_target(env.settings, env.pipeline, env.context)
    manifest, ref = env.pipeline.manifest, env.pipeline.dbt_ref
    values = {**env.context.template_values(), "target": target.target_name}
    compiled = compile_block(env.settings, env.pipeline.name, block.spec, target=target_info(target),
                             values=values, nodes=manifest.nodes if manifest else None,
                             project=ref.name if ref else None, preflight=False)
    label = where(env.settings, block.spec, block_file(env.settings, env.pipeline.name, block.spec, ".sql"))
    warehouse = LazyWarehouse(lambda: target)
    try:
        if compiled.materialize:
            return _materialize(warehouse, compiled, label)
        frame = warehouse.read_sql(compiled.sql)
    finally:
        warehouse.close()
    if compiled.check:
        _check(frame, compiled.check, label)
    return BlockOutcome(output=frame, rows=len(frame), message=f"query returned {len(frame)} rows")


def _materialize(warehouse: Any, compiled: CompiledSql, label: str) -> BlockOutcome:
    dialect, rel = compiled.target.dialect, compiled.relation
    existing = None
    if dialect != "bigquery":
        style = "?" if dialect == "duckdb" else "%s"
        found = warehouse.read_sql(
            f"select table_type from information_schema.tables where table_schema = {style} "
            f"and table_name = {style}", [rel.db, rel.name])
        if len(found):
            existing = "view" if "VIEW" in str(found.iloc[0, 0]).upper() else "table"
    statements = materialize_statements(compiled, existing)
    _execute_in_transaction(warehouse, dialect, statements, label, compiled.relation_sql())
    rows = None
    if compiled.materialize == "table":
        rows = int(warehouse.read_sql(f"select count(*) as n from {compiled.relation_sql()}").iloc[0, 0])
    name = Relation(compiled.relation_sql(), database=rel.catalog or None, schema=rel.db, table=rel.name)
    return BlockOutcome(output=str(name), rows=rows, message=f"created {compiled.materialize} {name}",
                        writes=(f"{rel.db.lower()}.{rel.name.lower()}",))


def _execute_in_transaction(warehouse: Any, dialect: str, statements: list[str], label: str,
                            relation: str) -> None:
    if dialect == "bigquery":
        for statement in statements:
            warehouse.read_sql(statement)
        return
    conn = warehouse.connection

    def run(statement: str) -> None:
        if dialect == "duckdb":
            conn.execute(statement)
        else:
            with conn.cursor() as cur:
                cur.execute(statement)

    run("BEGIN")
    try:
        for statement in statements:
            run(statement)
    except Exception as exc:
        run("ROLLBACK")
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise BlockError(f"{label}: creating {relation} failed (rolled back): {first}") from None
    run("COMMIT")


def _check(frame: Any, column: str, label: str) -> None:
    if column not in frame.columns:
        raise BlockError(f"{label}: check column '{column}' is not in the result "
                         f"(columns: {', '.join(map(str, frame.columns))})")
    if frame.empty:
        raise BlockError(f"{label}: check '{column}' failed: the query returned no rows")
    ok = frame[column].fillna(False).astype(bool)
    if not ok.all():
        bad = frame[~ok]
        first = ", ".join(f"{k}={v}" for k, v in bad.iloc[0].items())
        raise BlockError(f"{label}: check '{column}' failed in {len(bad)} of {len(frame)} row(s); "
                         f"first: {first}")


def preflight_values(pipeline_spec: Any, target_name: str | None) -> dict[str, Any]:
    """Template values for the pre-run parse: today's interval in the pipeline's timezone."""
    from datetime import datetime

    from mage_dbt.context import make_context
    from mage_dbt.dates import get_timezone

    # A day interval: its dates are valid values whatever the pipeline's interval unit.
    today = datetime.now(get_timezone(pipeline_spec.timezone)).date().isoformat()
    context = make_context(pipeline_spec.name, today, interval="day", timezone=pipeline_spec.timezone,
                           vars=pipeline_spec.vars, target=target_name, run_id="preflight")
    return {**context.template_values(), "target": target_name}

