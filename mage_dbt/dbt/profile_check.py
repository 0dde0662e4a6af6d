"""Before dbt parses: the project's dbt_project.yml and profiles.yml, checked with file, line and fix.

dbt reports these mistakes as "does not parse" or "Could not find adapter type" deep in a runtime
error; here each one is one line naming the file (and line), the cause and what to change:
malformed YAML in either file, a profile that is not in profiles.yml, an unknown target (asked for,
or the profile's default `target:`) and an adapter `type:` that is not installed. Values dbt
renders with jinja (`{{ env_var(...) }}`) are left to dbt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mage_dbt.errors import DbtProjectError

# Modules of dbt.adapters that are not adapters.
_NOT_ADAPTERS = {"base", "sql", "cache", "capability", "catalogs", "clients", "contracts", "events",
                 "exceptions", "factory", "protocol", "record", "reference_keys", "relation_configs", "utils"}


def read_yaml(path: Path, what: str) -> tuple[Any, Any]:
    """(data, node tree) of a YAML file, or a one-line DbtProjectError with its line and column."""
    text = path.read_text()
    try:
        return yaml.safe_load(text) or {}, yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DbtProjectError(f"{where}: malformed YAML in {what}: {problem}",
                              hint="fix the indentation or quoting at that line") from None


def line_of(root: Any, *keys: str) -> int:
    """1-based line of the mapping key at `keys` (or of its deepest parent found)."""
    line, node = 1, root
    for key in keys:
        found = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key:
                    line, found = k.start_mark.line + 1, v
                    break
        if found is None:
            break
        node = found
    return line


def installed_adapters() -> list[str]:
    import pkgutil

    import dbt.adapters

    return sorted(m.name for m in pkgutil.iter_modules(dbt.adapters.__path__)
                  if m.ispkg and m.name not in _NOT_ADAPTERS and not m.name.startswith("_"))


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def check_profile(ref: Any) -> None:
    """Fail early, in one line, when the project's profile, its target or the target's adapter is unusable."""
    project_file = ref.project_dir / "dbt_project.yml"
    profiles_file = ref.profiles_dir / "profiles.yml"
    project, _ = read_yaml(project_file, f"dbt project '{ref.name}'")
    profiles, root = read_yaml(profiles_file, "the warehouse connection profiles")
    profile_name = project.get("profile") if isinstance(project, dict) else None
    profile = profiles.get(profile_name) if isinstance(profiles, dict) else None
    if not isinstance(profile, dict):
        names = ", ".join(k for k in profiles if k != "config") if isinstance(profiles, dict) else ""
        raise DbtProjectError(
            f"profile '{profile_name}' (from {project_file}) is not in {profiles_file}",
            hint=f"add it to profiles.yml; profiles there: {names or 'none'}",
        )
    outputs = profile.get("outputs") if isinstance(profile.get("outputs"), dict) else {}
    targets = sorted(outputs)
    if ref.target and ref.target not in targets:
        raise DbtProjectError(
            f"unknown target '{ref.target}' for profile '{profile_name}' in {profiles_file}",
            hint=f"use one of: {', '.join(targets)}",
        )
    target = ref.target or profile.get("target")
    if target is None or _templated(target):
        return
    if target not in targets:
        raise DbtProjectError(
            f"{profiles_file}:{line_of(root, profile_name, 'target')}: the default target '{target}' of profile "
            f"'{profile_name}' is not one of its outputs ({', '.join(targets) or 'none'})",
            hint=f"set `target:` to one of them, or add an output named '{target}' under `outputs:`",
        )
    kind = outputs[target].get("type") if isinstance(outputs[target], dict) else None
    if kind is None or _templated(kind) or str(kind) in installed_adapters():
        return
    raise DbtProjectError(
        f"{profiles_file}:{line_of(root, profile_name, 'outputs', target, 'type')}: target '{target}' of profile "
        f"'{profile_name}' has adapter type '{kind}', which is not installed "
        f"(installed: {', '.join(installed_adapters())})",
        hint=f"fix `type:` (a typo?), or install the dbt-{kind} adapter",
    )
