"""The pipeline file format: `flows/<name>.yaml`, validated with pydantic, errors with file and line.

```yaml
description: Daily shop analytics
dbt:
  project: demo            # folder under dbt_projects/ (default: mage_dbt.yaml default_dbt_project)
  select: ["+fct_orders"]  # dbt selector syntax; string or list
  exclude: []
  command: build           # build: models, seeds, snapshots, tests; run: models only
  event_time_window: run_interval  # microbatch models: run_interval (the run's dates) or dbt_now
vars: {}                   # extra dbt vars for every run
target: null               # dbt target (default: the profile's default)
timezone: UTC              # of execution dates given without an offset
reuse: false               # skip dbt nodes unchanged since their last build (run option --reuse/--no-reuse)
only_fresh_sources: {lag_seconds: 0, on_error: fail}  # skip nodes whose sources have no new data (or true)
blocks:                    # Python, SQL and generic dbt command blocks
  - name: load_orders
    type: python
    file: flows/demo/load_orders.py
    upstream: []
```
Later features add their own keys (schedules, on_drift, sync_on_run); unknown top-level keys are
rejected so typos surface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from mage_dbt.dbt.manifest import DbtProjectRef
from mage_dbt.errors import ConfigError, PipelineNotFound
from mage_dbt.pipelines.production_policies import ConcurrencySpec, NotifySpec, TriggerSpec, as_notify_list
from mage_dbt.pipelines.run_policies import POLICY_KEYS, PolicyFields, RunPolicySpec, SelectionPolicy
from mage_dbt.pipelines.schedules import check_cron, check_kind, check_timezone
from mage_dbt.settings import ProjectSettings

BLOCK_TYPES = ("python", "sql", "dbt_command")


def _as_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


class DbtSelection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: str | None = None
    select: list[str] | None = None
    exclude: list[str] | None = None
    command: Literal["build", "run"] = "build"
    # Microbatch models: run_interval = dbt's batches are the run's interval (a run for D writes
    # D's batches; a backfill D1..D2 all of them, in one invocation); dbt_now = no window is
    # passed and dbt picks the batches from the current time and `lookback`, as a plain `dbt run`.
    event_time_window: Literal["run_interval", "dbt_now"] = "run_interval"
    policies: list[SelectionPolicy] = Field(default_factory=list)  # run policies by dbt selector

    _lists = field_validator("select", "exclude", mode="before")(lambda cls, v: _as_list(v))


class BlockSpec(PolicyFields):
    """A non-dbt block (with its run policy keys); kind-specific keys are validated by the block's runner."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")
    type: Literal["python", "sql", "dbt_command"]
    file: str | None = None
    upstream: list[str] = Field(default_factory=list)

    _upstream = field_validator("upstream", mode="before")(lambda cls, v: _as_list(v) or [])

    def option(self, key: str, default: Any = None) -> Any:
        return (self.model_extra or {}).get(key, default)


class ScheduleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cron: str | None = None
    interval_seconds: int | None = Field(default=None, gt=0)
    timezone: str = "UTC"
    active: bool = True

    # Checked here, as Prefect will check them, so a bad schedule fails with file and line.
    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        return check_timezone(value)

    @model_validator(mode="after")
    def _one_kind(self) -> "ScheduleSpec":
        check_kind(self.cron, self.interval_seconds)
        return self


class FreshSourcesSpec(BaseModel):
    """`only_fresh_sources:` — skip dbt nodes whose sources have no new data (mage_dbt.runs.freshness_gate)."""

    model_config = ConfigDict(extra="forbid")

    lag_seconds: int = Field(default=0, ge=0)  # data loaded this long before a build still counts as new
    on_error: Literal["fail", "warn"] = "fail"  # a source past its error_after: fail or warn its downstream


def _fresh_sources(value: Any) -> Any:
    return {} if value is True else None if value is False else value


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    dbt: DbtSelection | None = None
    vars: dict[str, Any] = Field(default_factory=dict)
    target: str | None = None
    timezone: str = "UTC"
    interval: Literal["hour", "day", "week", "month"] = "day"
    # Each interval builds on the previous one's results: backfills run intervals one at a time, in
    # date order, and stop at the first failure (never --concurrency > 1, also not through a work pool).
    depends_on_past: bool = False
    tags: list[str] = Field(default_factory=list)
    schedule: ScheduleSpec | None = None
    full_refresh_schedule: ScheduleSpec | None = None
    on_drift: Literal["fail", "full_refresh", "warn"] = "fail"
    sync_on_run: bool = False
    # Skip dbt nodes whose state key matches their last successful build (mage_dbt.runs.reuse).
    reuse: StrictBool = False
    only_fresh_sources: FreshSourcesSpec | None = None
    run_policy: RunPolicySpec = Field(default_factory=RunPolicySpec)  # retries/timeouts of every block
    blocks: list[BlockSpec] = Field(default_factory=list)
    concurrency: ConcurrencySpec | None = None  # production_policies.py
    notify: list[NotifySpec] = Field(default_factory=list)
    trigger: TriggerSpec | None = None

    _notify = field_validator("notify", mode="before")(lambda cls, v: as_notify_list(v))
    _fresh = field_validator("only_fresh_sources", mode="before")(lambda cls, v: _fresh_sources(v))

    def block_spec(self, name: str) -> BlockSpec | None:
        return next((b for b in self.blocks if b.name == name), None)


def pipeline_path(flows_dir: Path, name: str) -> Path:
    path = flows_dir / f"{name}.yaml"
    if not path.is_file():
        alt = flows_dir / f"{name}.yml"
        if alt.is_file():
            return alt
        known = sorted(p.stem for p in flows_dir.glob("*.y*ml")) if flows_dir.is_dir() else []
        raise PipelineNotFound(
            f"unknown pipeline '{name}': no {path}",
            hint=f"available pipelines: {', '.join(known) or 'none'} (create flows/{name}.yaml)",
        )
    return path


def list_pipelines(flows_dir: Path) -> list[str]:
    return sorted(p.stem for p in flows_dir.glob("*.y*ml")) if flows_dir.is_dir() else []


def load_pipeline_spec(flows_dir: Path, name: str) -> PipelineSpec:
    """Read and validate `flows/<name>.yaml`; errors name the file and line."""
    path = pipeline_path(flows_dir, name)
    text = path.read_text()
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(
            f"{where}: malformed YAML: {getattr(exc, 'problem', None) or exc}",
            hint="fix the indentation/quoting at that line",
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}:1: a pipeline file must be a mapping of keys", hint="see README")
    raw.setdefault("name", name)
    try:
        spec = PipelineSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [p for p in err["loc"] if not isinstance(p, str) or not p.startswith("function-")]
        line = _line_of(root, loc)
        field = ".".join(str(p) for p in loc) or "(top level)"
        raise ConfigError(
            f"{path}:{line}: '{field}': {err['msg']}",
            hint="see the pipeline file format in README",
        ) from None
    _refuse_unknown_options(spec, root, path)
    if spec.dbt is None and not spec.blocks:
        raise ConfigError(f"{path}:1: the pipeline has nothing to run: no 'dbt:' selection and no 'blocks:'",
                          hint="add e.g. `dbt: {select: [\"*\"]}` or a python/sql/dbt_command block "
                          "(see the pipeline file format in README)")
    return spec


# The block options each runner reads (besides name, type, file, upstream); anything else would be
# silently ignored, so it is refused (a typo, or an option of a later version). Every kind also takes
# the run policy keys (mage_dbt.pipelines.run_policies).
BLOCK_OPTIONS = {
    "python": ("writes", "poke_interval", "timeout"),
    "sql": ("dialect", "materialize", "table", "schema", "check"),
    "dbt_command": ("command", "project"),
}


def _refuse_unknown_options(spec: PipelineSpec, root: Any, path: Path) -> None:
    import difflib

    for index, block in enumerate(spec.blocks):
        known = BLOCK_OPTIONS[block.type]
        for key in block.model_extra or {}:
            if key in known:
                continue
            close = difflib.get_close_matches(key, [*known, "upstream", "file", *POLICY_KEYS], n=1, cutoff=0.75)
            hint = f"did you mean '{close[0]}'? " if close else "remove it; "
            raise ConfigError(
                f"{path}:{_line_of(root, ['blocks', index, key])}: block '{block.name}': unknown option "
                f"'{key}' (mage_dbt does not read it, it would be ignored)",
                hint=f"{hint}{block.type} blocks take: {', '.join(('file', 'upstream', *known, *POLICY_KEYS))}",
            )


def _line_of(node: Any, loc: list[Any]) -> int:
    """The 1-based line of the YAML node at `loc` (or of its deepest existing parent)."""
    line = (node.start_mark.line + 1) if node is not None else 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    child = value
                    line = key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def where_in_file(path: Path, loc: list[Any]) -> str:
    """`file:line` of the key at `loc` of a pipeline file (for checks made after loading it)."""
    try:
        return f"{path}:{_line_of(yaml.compose(path.read_text()), loc)}"
    except (OSError, yaml.YAMLError):
        return str(path)


def dbt_project_ref(settings: ProjectSettings, spec: PipelineSpec, target: str | None) -> DbtProjectRef:
    """The dbt project a pipeline runs: its `dbt: project:` (default: mage_dbt.yaml's), on the run's target."""
    project = (spec.dbt.project if spec.dbt else None) or settings.file.default_dbt_project
    return DbtProjectRef(
        name=project,
        project_dir=settings.dbt_project_dir(project),
        profiles_dir=settings.profiles_dir,
        data_dir=settings.data_dir,
        target=target or spec.target,
    )
