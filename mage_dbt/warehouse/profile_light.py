"""profiles.yml rendered without importing dbt (about 2-3 s of a run's start-up on these machines),
for the common profile whose Jinja calls only `env_var()` and `var()`.

The templates go through dbt_common's own native Jinja environment (the one dbt's `ProfileRenderer`
uses: same `as_number`/`as_bool`/`as_native` filters, same native concatenation), with `env_var` and
`var` behaving as in dbt's `SecretContext`. Anything else falls back to dbt's renderer by returning
None: another name in a template (`target`, `modules`, macros), a `DBT_ENV_SECRET_*` variable (dbt
hides those behind a placeholder while rendering), an unset variable without a default (dbt's own
error says it), a template that fails, a file that is not plain YAML.
"""

from __future__ import annotations

import os
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

SECRET_ENV_PREFIX = "DBT_ENV_SECRET_"
NAMES = frozenset({"env_var", "var"})


class _Fallback(Exception):
    """This profile needs dbt's own renderer."""


def render_target_light(path: Path, profile_name: str, target: Optional[str],
                        cli_vars: Mapping[str, Any]) -> Optional[tuple[str, dict[str, Any]]]:
    """(target name, rendered output) of `profile_name` in profiles.yml at `path`, as dbt renders it;
    None when dbt's renderer must do it (see the module docstring)."""
    try:
        profile = (yaml.safe_load(path.read_text()) or {})[profile_name]
        outputs = profile["outputs"]
        name = target if target is not None else _render(profile.get("target", "default"), cli_vars)
        data = outputs[name]
        if not isinstance(data, dict):
            return None
        return str(name), {key: _render(value, cli_vars) for key, value in data.items()}
    except Exception:  # noqa: BLE001 — any doubt: dbt renders it, and says what is wrong
        return None


def _render(value: Any, cli_vars: Mapping[str, Any]) -> Any:
    if isinstance(value, dict):
        return {k: _render(v, cli_vars) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, cli_vars) for v in value]
    if not isinstance(value, str):
        return value.isoformat() if isinstance(value, date) else value
    from jinja2 import meta

    env = _environment()
    if not NAMES.issuperset(meta.find_undeclared_variables(env.parse(value))):
        raise _Fallback
    context = {"env_var": _env_var, "var": _var(cli_vars)}
    return env.from_string(value, globals=context).render(context)


@lru_cache(maxsize=1)
def _environment() -> Any:
    from dbt_common.clients.jinja import get_environment

    return get_environment(None, False, native=True)


def _env_var(name: str, default: Optional[str] = None) -> Any:
    if name.startswith(SECRET_ENV_PREFIX):
        raise _Fallback
    if name in os.environ:
        return os.environ[name]
    if default is None:
        raise _Fallback
    return default


def _var(cli_vars: Mapping[str, Any]):
    def var(name: str, default: Any = None) -> Any:
        if name in cli_vars:
            return cli_vars[name]
        if default is None:
            raise _Fallback
        return default
    return var
