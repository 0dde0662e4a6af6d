"""The production-policy checks that need every pipeline of the project, each naming a file and line.

One pipeline file cannot show these mistakes alone: a concurrency limit name that two pipelines give
two different limits (which limit would Prefect hold?), a `trigger: after:` naming a pipeline that
does not exist, and a trigger cycle (A after B after A: each run would start the other forever).
`mage-dbt deploy` runs them over every pipeline in flows/ before anything is registered.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from mage_dbt.errors import ConfigError
from mage_dbt.pipelines.spec import PipelineSpec, _line_of, list_pipelines, load_pipeline_spec, pipeline_path

PIPELINE_LIMIT_PREFIX = "mage-dbt-pipeline:"
GROUP_LIMIT_PREFIX = "mage-dbt-group:"


def concurrency_limit_name(spec: PipelineSpec) -> str | None:
    """The Prefect global concurrency limit a pipeline's `concurrency:` takes a slot of (None: no limit)."""
    if spec.concurrency is None:
        return None
    if spec.concurrency.name:
        return GROUP_LIMIT_PREFIX + spec.concurrency.name
    return PIPELINE_LIMIT_PREFIX + spec.name


def where(flows_dir: Path, name: str, loc: list) -> str:
    """`file:line` of the key at `loc` in pipeline `name`'s file."""
    path = pipeline_path(flows_dir, name)
    root = yaml.compose(path.read_text())
    # `notify:` and `trigger: after:` also take one item without a list: the index is then not in the file.
    # The deeper of the two walks is the key's own line (a child never sits above its parent).
    return f"{path}:{max(_line_of(root, loc), _line_of(root, [p for p in loc if not isinstance(p, int)]))}"


def load_all_specs(flows_dir: Path) -> dict[str, PipelineSpec]:
    """Every pipeline of the project, validated (the first bad file raises its file:line error)."""
    return {name: load_pipeline_spec(flows_dir, name) for name in list_pipelines(flows_dir)}


def check_policies(flows_dir: Path, specs: dict[str, PipelineSpec]) -> None:
    """ConfigError (file:line) for the first cross-pipeline mistake in `specs` (every pipeline of the project)."""
    _check_limits(flows_dir, specs)
    _check_triggers(flows_dir, specs)


def _check_limits(flows_dir: Path, specs: dict[str, PipelineSpec]) -> None:
    first: dict[str, tuple[str, int]] = {}
    for name, spec in specs.items():
        limit_name = concurrency_limit_name(spec)
        if limit_name is None:
            continue
        seen = first.setdefault(limit_name, (name, spec.concurrency.limit))
        if seen[1] != spec.concurrency.limit:
            raise ConfigError(
                f"{where(flows_dir, name, ['concurrency', 'limit'])}: concurrency limit "
                f"'{spec.concurrency.name}' is {spec.concurrency.limit} here but {seen[1]} in pipeline "
                f"'{seen[0]}' ({where(flows_dir, seen[0], ['concurrency', 'limit'])})",
                hint="pipelines sharing a concurrency name must give it the same limit",
            )


def _check_triggers(flows_dir: Path, specs: dict[str, PipelineSpec]) -> None:
    for name, spec in specs.items():
        for index, upstream in enumerate(spec.trigger.after if spec.trigger else []):
            if upstream not in specs:
                raise ConfigError(
                    f"{where(flows_dir, name, ['trigger', 'after', index])}: trigger after unknown pipeline "
                    f"'{upstream}'", hint=f"pipelines: {', '.join(sorted(specs)) or 'none'}")
            if upstream == name:
                raise ConfigError(f"{where(flows_dir, name, ['trigger', 'after', index])}: pipeline '{name}' "
                                  "is triggered after itself", hint="remove it from 'after'")
    for start in specs:
        cycle = _cycle_from(start, specs)
        if cycle:
            index = specs[cycle[0]].trigger.after.index(cycle[1])
            raise ConfigError(
                f"{where(flows_dir, cycle[0], ['trigger', 'after', index])}: trigger cycle: "
                f"{' after '.join(cycle)} (each run would start the next forever)",
                hint="remove one of these pipelines from another's 'trigger: after:'",
            )


def _cycle_from(start: str, specs: dict[str, PipelineSpec]) -> list[str] | None:
    """A path start -> ... -> start along `trigger.after`, or None."""
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        spec = specs.get(node)
        for upstream in (spec.trigger.after if spec and spec.trigger else []):
            if upstream == start:
                return [*path, start]
            if upstream not in seen and upstream in specs:
                seen.add(upstream)
                stack.append((upstream, [*path, upstream]))
    return None
