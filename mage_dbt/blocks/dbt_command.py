"""Generic dbt command blocks: `type: dbt_command` runs one dbt command inside a pipeline.

```yaml
blocks:
  - name: check_orders
    type: dbt_command
    command: "test --select stg_orders --vars '{day: {{ execution_date }}}'"
    upstream: [stg_orders]
    project: demo            # optional: the dbt project (default: the pipeline's)
```
Supported commands: run, build, test, seed, snapshot, source freshness, run-operation, retry,
docs generate, compile, show. The command is a jinja2 template over the run context
(`{{ execution_date }}`, `{{ interval_start }}`, `{{ vars.x }}`, ...: `RunContext.template_values`);
dbt's own jinja inside an argument (e.g. `show --inline`) goes in `{% raw %}...{% endraw %}`.

Commands are checked against dbt's own click definitions when the pipeline is loaded (unknown
command, unknown flag, bad value → a one-line error naming the block), and again with the real
run context when the block runs. Flags mage_dbt owns are refused with the reason. `--vars` is
merged over the run's vars; the run's date vars cannot be overridden. Every command but `retry`
reuses the cached, parsed manifest. The block's output (a dict: counts by status, the node list,
the previewed rows of `show`, the messages of `run-operation`: `mage_dbt.blocks.dbt_command_output`) is
logged to the block's Prefect task run; a command dbt reports as failed fails the block.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from dataclasses import dataclass, field
from typing import Any, Mapping

import jinja2
import jinja2.sandbox
import yaml

from mage_dbt.dbt.microbatch import EVENT_TIME_COMMANDS, EVENT_TIME_FLAGS, event_time_args
from mage_dbt.errors import ConfigError, DbtProjectError, ExecutionError


COMMANDS = (
    "run", "build", "test", "seed", "snapshot", "source freshness", "run-operation", "retry",
    "docs generate", "compile", "show",
)
GROUPS = ("source", "docs")  # dbt commands that take a sub-command
OWN_PARSE = frozenset({"retry"})  # dbt re-parses for these whatever manifest it is given
FULL_REFRESH_COMMANDS = frozenset({"run", "build", "seed"})
DATE_VARS = ("execution_date", "execution_ts", "interval_start", "interval_end")
OWNED_FLAGS = {
    "project_dir": "mage_dbt points dbt at the pipeline's dbt project (use the block's `project:` key)",
    "profiles_dir": "the mage_dbt project's profiles.yml is the single source of connection settings",
    "profile": "the profile comes from dbt_project.yml; the cached manifest was parsed with it",
    "target_path": "mage_dbt keeps dbt's artifacts in its data folder (and reuses the parsed manifest)",
    "log_path": "mage_dbt keeps dbt's logs in its data folder",
    "version": "it prints dbt's version instead of running a command",
}


@dataclass(frozen=True)
class DbtCommand:
    """A checked dbt command of one block: the command, the user's args and their `--vars`."""

    block: str
    command: str  # "run", "source freshness", ...
    args: tuple[str, ...]  # the arguments after the command, without --vars
    vars: Mapping[str, Any] = field(default_factory=dict)
    target: str | None = None  # a --target given in the block (only when the run sets none)
    full_refresh_given: bool = False

    @property
    def words(self) -> list[str]:
        return self.command.split()


# -- templating and parsing -------------------------------------------------------------------------

def _environment() -> jinja2.Environment:
    return jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)


def render_command(block: str, template: str, values: Mapping[str, Any]) -> str:
    """Render the command template; errors name the block."""
    try:
        return _environment().from_string(template).render(**values)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(
            f"dbt_command block '{block}': template error in command, line {exc.lineno}: {exc.message}",
            hint="fix the {{ ... }} expression; wrap dbt's own jinja in {% raw %}...{% endraw %}",
        ) from None
    except jinja2.UndefinedError as exc:
        raise ConfigError(
            f"dbt_command block '{block}': command uses an undefined value: {exc.message}",
            hint="available: execution_date, execution_ts, interval_start, interval_end, vars.<name>, "
            "full_refresh, target, run_id, pipeline",
        ) from None


def parse_command(block: str, text: str, *, run_target: str | None, check_values: bool = True) -> DbtCommand:
    """Check a rendered command against dbt's click definitions; return its parts."""
    import click
    from dbt.cli.main import cli

    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise ConfigError(f"dbt_command block '{block}': cannot split command {text!r}: {exc}",
                          hint="balance the quotes in `command:`") from None
    if tokens[:1] == ["dbt"]:
        tokens = tokens[1:]
    words = tokens[:2] if tokens[:1] and tokens[0] in GROUPS else tokens[:1]
    command = " ".join(words)
    if command not in COMMANDS:
        group = cli.commands.get(words[0]) if words else None
        known = command in cli.commands or (len(words) == 2 and words[1] in getattr(group, "commands", {}))
        what = f"dbt command '{command}' cannot run as a block" if known else f"unknown dbt command '{command or text}'"
        raise ConfigError(f"dbt_command block '{block}': {what}", hint=f"use one of: {', '.join(COMMANDS)}")
    click_cmd = cli.commands[words[0]] if len(words) == 1 else cli.commands[words[0]].commands[words[1]]
    rest, block_vars = _take_vars(block, tokens[len(words):])
    if "--help" in rest:
        raise ConfigError(f"dbt_command block '{block}': `{command} --help` does not run anything",
                          hint="remove --help from the command")
    try:
        parser = click_cmd.make_parser(click.Context(click_cmd, info_name=command))
        opts, _, order = parser.parse_args(list(rest))
    except click.ClickException as exc:
        raise _click_error(block, command, exc) from None
    given = {p.name for p in order}
    for name in sorted(given & set(OWNED_FLAGS)):
        flag = _flag(click_cmd, name)
        raise ConfigError(f"dbt_command block '{block}': {flag} is set by mage_dbt: {OWNED_FLAGS[name]}",
                          hint=f"remove {flag} from the command")
    if "target" in given and run_target:
        raise ConfigError(
            f"dbt_command block '{block}': --target is set by the run (target '{run_target}'): every block of a run "
            "uses the same target", hint="remove --target from the command, or run without --target / `target:`")
    if check_values:  # types, missing arguments, extra arguments: dbt's own checks
        try:
            click_cmd.make_context(command, list(rest))
        except click.ClickException as exc:
            raise _click_error(block, command, exc) from None
    clash = sorted(set(block_vars) & set(DATE_VARS))
    if clash:
        raise ConfigError(
            f"dbt_command block '{block}': --vars sets {', '.join(clash)}, which the run owns (its execution date)",
            hint="use {{ execution_date }} in the command, or run the pipeline with --execution-date")
    return DbtCommand(block=block, command=command, args=tuple(rest), vars=block_vars,
                      target=opts.get("target"), full_refresh_given="full_refresh" in given)


def _click_error(block: str, command: str, exc: Any) -> ConfigError:
    return ConfigError(f"dbt_command block '{block}': dbt {command}: {exc.format_message()}",
                       hint=f"see `dbt {command} --help` for its options")


def _flag(click_cmd: Any, name: str) -> str:
    param = next((p for p in click_cmd.params if p.name == name), None)
    return max(param.opts, key=len) if param is not None else f"--{name.replace('_', '-')}"


def _take_vars(block: str, tokens: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Remove `--vars VALUE` / `--vars=VALUE` from `tokens`; return the rest and the parsed vars."""
    rest: list[str] = []
    found: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--vars" or token.startswith("--vars="):
            if token == "--vars":
                if i + 1 >= len(tokens):
                    raise ConfigError(f"dbt_command block '{block}': --vars needs a value", hint="e.g. --vars '{x: 1}'")
                raw, i = tokens[i + 1], i + 2
            else:
                raw, i = token.split("=", 1)[1], i + 1
            try:
                value = yaml.safe_load(raw) if raw.strip() else {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"dbt_command block '{block}': --vars {raw!r} is not valid YAML: "
                                  f"{getattr(exc, 'problem', exc)}", hint="e.g. --vars '{region: eu}'") from None
            if not isinstance(value, dict):
                raise ConfigError(f"dbt_command block '{block}': --vars {raw!r} is not a mapping",
                                  hint="e.g. --vars '{region: eu}'")
            found.update(value)
            continue
        rest.append(token)
        i += 1
    return rest, found


# -- pre-flight: called when a pipeline is loaded ---------------------------------------------------

class _RuntimeValue:
    """A `vars.x` not known before the run (a `--var` given at run time)."""

    def __str__(self) -> str:
        return "MAGE_DBT_RUNTIME_VALUE"

    def __getattr__(self, name: str) -> "_RuntimeValue":
        if name.startswith("_"):
            raise AttributeError(name)
        return self

    def __getitem__(self, key: Any) -> "_RuntimeValue":
        return self


class _RuntimeVars(dict):
    used = False

    def __missing__(self, key: Any) -> _RuntimeValue:
        self.used = True
        return _RuntimeValue()


def check_dbt_command_blocks(settings: Any, spec: Any, *, target: str | None) -> list[DbtCommand]:
    """Check every dbt_command block of a pipeline before anything runs; errors name file and block."""
    checked = []
    for block_spec in spec.blocks:
        if block_spec.type != "dbt_command":
            continue
        try:
            checked.append(check_block_spec(settings, spec, block_spec, target=target))
        except ConfigError as exc:
            raise ConfigError(f"{_pipeline_file(settings, spec)}: {exc.message}", hint=exc.hint) from None
    return checked


def check_block_spec(settings: Any, spec: Any, block_spec: Any, *, target: str | None) -> DbtCommand:
    from mage_dbt.context import make_context
    from mage_dbt.dbt.manifest import check_profile

    name = block_spec.name
    template = _template(name, block_spec)
    when = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    context = make_context(spec.name, when, interval=spec.interval, timezone=spec.timezone,
                           vars=spec.vars, target=target)
    values = context.template_values()
    values["vars"] = runtime_vars = _RuntimeVars(values["vars"])
    text = render_command(name, template, values)
    command = parse_command(name, text, run_target=target, check_values=not runtime_vars.used)
    ref = block_ref(settings, spec, block_spec, target=target or command.target)
    if command.target:
        try:
            check_profile(ref)
        except DbtProjectError as exc:
            raise ConfigError(f"dbt_command block '{name}': {exc.message}", hint=exc.hint) from None
    return command


def _template(name: str, block_spec: Any) -> str:
    template = block_spec.option("command")
    if not isinstance(template, str) or not template.strip():
        raise ConfigError(f"dbt_command block '{name}' has no `command:`",
                          hint='add e.g. command: "test --select tag:daily"')
    return template


def _pipeline_file(settings: Any, spec: Any) -> str:
    from mage_dbt.pipelines.spec import pipeline_path

    try:
        path = pipeline_path(settings.flows_dir, spec.name)
        return str(path.relative_to(settings.root))
    except (ConfigError, ValueError):
        return f"pipeline '{spec.name}'"


def block_ref(settings: Any, spec: Any, block_spec: Any, *, target: str | None) -> Any:
    """The dbt project (block `project:`, else the pipeline's, else the default) the block runs in."""
    from mage_dbt.dbt.manifest import DbtProjectRef

    project = block_spec.option("project") or (spec.dbt.project if spec.dbt else None) \
        or settings.file.default_dbt_project
    return DbtProjectRef(name=project, project_dir=settings.dbt_project_dir(project),
                         profiles_dir=settings.profiles_dir, data_dir=settings.data_dir, target=target)


# -- running ------------------------------------------------------------------------------------------

def dbt_args(command: DbtCommand, ref: Any, context: Any) -> list[str]:
    """The full dbt argument list: orchestrator flags first, so the block's own flags win."""
    args = [*command.words, *ref.base_args(), "--log-level", "none", "--no-use-colors", *command.args]
    merged = {**dict(context.vars), **dict(command.vars), **context.date_vars()}
    args += ["--vars", json.dumps(merged, default=str)]
    if context.full_refresh and command.command in FULL_REFRESH_COMMANDS and not command.full_refresh_given:
        args.append("--full-refresh")
    if context.event_time and command.command in EVENT_TIME_COMMANDS and not set(EVENT_TIME_FLAGS) & {
            a.split("=")[0] for a in command.args}:
        args += event_time_args(context.event_time)  # microbatch models it selects: the run's batches
    return args


def run_dbt_command_block(block: Any, env: Any) -> Any:
    """Block runner for kind `dbt_command` (registered in mage_dbt.blocks.runners)."""
    from mage_dbt.blocks.dbt_command_output import (
        OutputEvents, failed_nodes, failure_text, headline, report, summarize,
    )
    from mage_dbt.blocks.runners import BlockOutcome
    from mage_dbt.dbt.invocation import invoke_dbt

    context = env.context
    text = render_command(block.name, _template(block.name, block.spec), context.template_values())
    command = parse_command(block.name, text, run_target=context.target)
    ref = block_ref(env.settings, env.pipeline.spec, block.spec, target=context.target or command.target)
    env.settings.export_environment()  # profiles read MAGE_DBT_DATA_DIR, also in pipelines without `dbt:`
    manifest = None if command.command in OWN_PARSE else _manifest_for(env.pipeline, ref).dbt_manifest
    events = OutputEvents()
    raw = invoke_dbt(dbt_args(command, ref, context), manifest=manifest, callbacks=[events],
                     invocation_log=ref.invocation_log)
    output = summarize(command.command, list(command.args), raw, events)
    report(env.reporter, block.name, output)
    if not raw.success:
        raise ExecutionError(failure_text(output), node_ids=failed_nodes(output))
    return BlockOutcome(output=output, message=headline(output), rows=output.get("rows_affected"))


def _manifest_for(pipeline: Any, ref: Any) -> Any:
    from mage_dbt.dbt.manifest import load_manifest

    if pipeline.manifest is not None and pipeline.dbt_ref == ref:
        return pipeline.manifest
    return load_manifest(ref)
