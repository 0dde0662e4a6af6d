"""What Python and SQL blocks share: dbt relations, the run's warehouse target, the block logger.

* `Relations` resolves `ref('model')` / `source('src', 'table')` against the manifest's node index
  to `Relation`s: the node's real relation name (a `str`, usable in SQL) with `database`,
  `schema` and `table` attributes (usable with `Warehouse.write(df, rel.table, schema=rel.schema)`).
* `block_target()` renders the dbt profile's target the run uses (profiles.yml is the only source
  of connection settings) and `LazyWarehouse` connects to it on first use only, so a block that
  never touches the warehouse never opens a connection; `close()` runs at the end of every block,
  which matters for DuckDB: its file takes one writing process at a time (dbt's included).
* `block_logger()` returns a logger whose records also reach the block's Prefect task run.
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from mage_dbt.dbt.nodes import DbtNode
from mage_dbt.errors import BlockError, ConfigError
from mage_dbt.pipelines.spec import dbt_project_ref

# dbt adapter type -> sqlglot dialect
DIALECTS = {"duckdb": "duckdb", "postgres": "postgres", "bigquery": "bigquery"}
RELATION_TYPES = ("model", "seed", "snapshot")


class Relation(str):
    """A warehouse relation name as dbt renders it, plus its parts."""

    database: str | None
    schema: str | None
    table: str
    unique_id: str | None

    def __new__(cls, name: str, *, database: str | None = None, schema: str | None = None,
                table: str = "", unique_id: str | None = None) -> "Relation":
        obj = super().__new__(cls, name)
        obj.database, obj.schema, obj.table, obj.unique_id = database, schema, table, unique_id
        return obj

    def __reduce__(self):
        return (_relation, (str(self), self.database, self.schema, self.table, self.unique_id))

    @classmethod
    def of(cls, node: DbtNode) -> "Relation":
        if not node.relation_name:
            raise BlockError(f"dbt node '{node.name}' has no relation (an ephemeral model?)",
                             hint="reference a model materialized as a table, view or incremental")
        return cls(node.relation_name, database=node.database, schema=node.schema,
                   table=node.alias or node.name, unique_id=node.unique_id)


def _relation(name, database, schema, table, unique_id):
    return Relation(name, database=database, schema=schema, table=table, unique_id=unique_id)


class RelationLookupError(BlockError):
    """`ref()` / `source()` names nothing in the manifest."""


class Relations:
    """ref()/source() over a manifest node index; records what was resolved."""

    def __init__(self, nodes: Mapping[str, DbtNode] | None, project: str | None = None) -> None:
        self.nodes = nodes or {}
        self.project = project or "?"
        self.used: dict[str, DbtNode] = {}

    def ref(self, *args: str, **kwargs: Any) -> Relation:
        """`ref('model')` or `ref('package', 'model')` (dbt's `version=` is accepted and ignored)."""
        if not args or len(args) > 2:
            raise RelationLookupError("ref() takes a model name, or a package and a model name")
        package, name = (args[0], args[1]) if len(args) == 2 else (None, args[0])
        found = [n for n in self.nodes.values() if n.resource_type in RELATION_TYPES
                 and n.name == name and (package is None or n.package_name == package)]
        if not found:
            names = sorted({n.name for n in self.nodes.values() if n.resource_type in RELATION_TYPES})
            raise RelationLookupError(
                f"ref({_args(args)}) names no model, seed or snapshot of dbt project '{self.project}'",
                hint=_suggest(name, names))
        node = sorted(found, key=lambda n: (n.package_name != self.project, n.unique_id))[0]
        self.used[node.unique_id] = node
        return Relation.of(node)

    def source(self, source_name: str, table_name: str) -> Relation:
        """`source('src', 'table')`."""
        found = [n for n in self.nodes.values() if n.resource_type == "source"
                 and source_parts(n) == (source_name, table_name)]
        if not found:
            names = sorted(".".join(source_parts(n)) for n in self.nodes.values()
                           if n.resource_type == "source")
            raise RelationLookupError(
                f"source({_args((source_name, table_name))}) is not a source of dbt project "
                f"'{self.project}'", hint=_suggest(f"{source_name}.{table_name}", names))
        node = found[0]
        self.used[node.unique_id] = node
        return Relation.of(node)


def source_parts(node: DbtNode) -> tuple[str, str]:
    """(source name, table name) of a source node (`source.<package>.<source>.<table>`)."""
    parts = node.unique_id.split(".")
    return (parts[2], parts[3]) if len(parts) >= 4 else ("", node.name)


def _args(args: tuple[str, ...]) -> str:
    return ", ".join(repr(a) for a in args)


def _suggest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3)
    if close:
        return f"did you mean {', '.join(close)}?"
    shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
    return f"known: {shown or 'none'}"


# -- the run's target ---------------------------------------------------------------------------------
def profile_name(project_dir: Path) -> str:
    """The `profile:` of a dbt project."""
    path = Path(project_dir) / "dbt_project.yml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    name = data.get("profile") if isinstance(data, dict) else None
    if not name:
        raise ConfigError(f"{path} names no profile", hint="add `profile: <name>` to it")
    return str(name)


def dbt_ref_for(settings: Any, pipeline: Any, target: str | None = None) -> Any:
    """The pipeline's dbt project (also for pipelines without a `dbt:` section: the default one)."""
    if getattr(pipeline, "dbt_ref", None) is not None:
        ref = pipeline.dbt_ref
        if target and target != ref.target:
            from dataclasses import replace

            ref = replace(ref, target=target)
        return ref
    return dbt_project_ref(settings, pipeline.spec, target)


def target_for_ref(ref: Any, variables: Mapping[str, Any] | None = None) -> Any:
    """The rendered target (`TargetConfig`) of a dbt project reference."""
    from mage_dbt.warehouse import resolve_target

    return resolve_target(ref.profiles_dir, profile_name(ref.project_dir), ref.target, vars=variables)


def block_target(settings: Any, pipeline: Any, context: Any = None) -> Any:
    """The rendered dbt target (`TargetConfig`) a block of this pipeline/run talks to."""
    ref = dbt_ref_for(settings, pipeline, getattr(context, "target", None))
    return target_for_ref(ref, context.dbt_vars() if context is not None else None)


def dialect_of(target: Any) -> str:
    try:
        return DIALECTS[target.type]
    except KeyError:
        raise ConfigError(f"target '{target.target_name}' has type '{target.type}': SQL blocks run "
                          f"on {', '.join(DIALECTS)}") from None


class LazyWarehouse:
    """A `Warehouse` for the run's target, resolved and connected on first use."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._warehouse: Any = None

    @property
    def opened(self) -> bool:
        return self._warehouse is not None

    def _get(self) -> Any:
        if self._warehouse is None:
            from mage_dbt.warehouse import connect

            self._warehouse = connect(self._factory())
        return self._warehouse

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._get(), name)

    def __enter__(self) -> "LazyWarehouse":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._warehouse is not None:
            warehouse, self._warehouse = self._warehouse, None
            warehouse.close()

    def __repr__(self) -> str:
        return f"LazyWarehouse({self._warehouse!r})" if self._warehouse else "LazyWarehouse(not connected)"


# -- logging --------------------------------------------------------------------------------------------
class _ReporterHandler(logging.Handler):
    def __init__(self, reporter: Any, block: str) -> None:
        super().__init__()
        self.reporter, self.block = reporter, block

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.reporter.log(self.block, self.format(record), record.levelno)
        except Exception:  # logging must never fail a block
            self.handleError(record)


def block_logger(block: str, reporter: Any = None) -> logging.Logger:
    """`mage_dbt.block.<name>`; with a reporter, records also go to the block's task run."""
    logger = logging.getLogger(f"mage_dbt.block.{block}")
    logger.setLevel(logging.INFO)
    detach_logger(block)
    if reporter is not None:
        logger.addHandler(_ReporterHandler(reporter, block))
    return logger


def detach_logger(block: str) -> None:
    """Stop sending the block's log records to a task run (at the end of the block)."""
    logger = logging.getLogger(f"mage_dbt.block.{block}")
    for handler in [h for h in logger.handlers if isinstance(h, _ReporterHandler)]:
        logger.removeHandler(handler)
