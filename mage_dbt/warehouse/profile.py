"""Resolve a dbt profile target into the connection settings warehouse I/O uses.

`profiles.yml` is the single source of connection settings. It is rendered with dbt's own
`ProfileRenderer` (so `env_var()`, `DBT_ENV_SECRET_*`, `as_number` and `var()` behave exactly as
in `dbt run`), without building a dbt `RuntimeConfig` or loading an adapter plugin. Only the
selected target is rendered, like dbt does: an unset env var in another target is no error.

`TargetConfig` never shows secrets: `repr()` masks them and error texts are scrubbed of them.
"""

from __future__ import annotations

import contextvars
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mage_dbt.errors import ConfigError

SUPPORTED_TYPES = ("bigquery", "duckdb", "postgres")

# dbt's own aliases (the `_ALIASES` of each adapter's Credentials class), copied so that resolving
# a target does not import the adapter plugins (dbt-bigquery alone takes seconds to import).
_ALIASES: dict[str, dict[str, str]] = {
    "postgres": {"dbname": "database", "pass": "password"},
    "duckdb": {},
    "bigquery": {
        "project": "database",
        "dataset": "schema",
        "target_project": "target_database",
        "target_dataset": "target_schema",
        "retries": "job_retries",
        "timeout_seconds": "job_execution_timeout_seconds",
        "dataproc_region": "compute_region",
    },
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "postgres": ("host", "user", "database", "schema"),
    "duckdb": (),
    "bigquery": ("method", "schema"),
}
_SECRET_MARKERS = ("password", "pass", "token", "secret", "keyfile_json", "private_key")


def is_secret_key(key: str) -> bool:
    """Whether a profile field holds a credential (never shown in repr or messages)."""
    lowered = key.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS)


@dataclass(frozen=True, repr=False)
class TargetConfig:
    """One rendered dbt target: adapter type, schema, database and all connection fields.

    `fields` holds the rendered, alias-translated profile output (dbt names: `database`,
    `password`, ...), secrets included, because connecting needs them; `repr()` masks them.
    """

    type: str
    profile_name: str
    target_name: str
    schema: str
    database: str | None
    fields: Mapping[str, Any] = field(default_factory=dict, hash=False)
    profiles_path: Path | None = None

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def secret_values(self) -> list[str]:
        """The secret strings of this target, to scrub from any text shown to a user."""
        return _secret_strings(self.fields)

    def __repr__(self) -> str:
        shown = _masked(self.fields)
        return (f"TargetConfig(type={self.type!r}, profile={self.profile_name!r}, "
                f"target={self.target_name!r}, schema={self.schema!r}, "
                f"database={self.database!r}, fields={shown!r})")

    __str__ = __repr__


def _masked(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with secret values (also nested ones, e.g. DuckDB `settings`) replaced by ***."""
    return {k: ("***" if is_secret_key(str(k)) and v not in (None, "") else
                _masked(v) if isinstance(v, Mapping) else v) for k, v in data.items()}


def first_line(text: str) -> str:
    """The first non-empty line of a driver's error message."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return text.strip()


def scrub(text: str, secrets: list[str]) -> str:
    """`text` with every secret value replaced by `***`."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def _secret_strings(data: Mapping[str, Any], inside_secret: bool = False) -> list[str]:
    found: list[str] = []
    for key, value in data.items():
        secret = inside_secret or is_secret_key(str(key))
        if isinstance(value, Mapping):
            found += _secret_strings(value, secret)
        elif secret and isinstance(value, str) and value:
            found.append(value)
    return found


def resolve_target(profiles_dir: Path | str, profile_name: str, target: str | None = None,
                   *, vars: Mapping[str, Any] | None = None) -> TargetConfig:
    """Render `profiles_dir/profiles.yml` and return the settings of one target.

    `target=None` picks the profile's `target:` (rendered, so `env_var()` works there too), else
    dbt's fallback `default`. `vars` are dbt `--vars`, available to `var()` in the profile.
    Raises ConfigError naming the file and the available profiles/targets when one is missing.
    """
    path = Path(profiles_dir) / "profiles.yml"
    if not path.is_file():
        raise ConfigError(f"no profiles.yml in {Path(profiles_dir)}",
                          hint="create it or point --profiles-dir at the folder holding it")
    from mage_dbt.warehouse.profile_light import render_target_light

    light = render_target_light(path, profile_name, target, dict(vars or {}))
    if light is not None:
        return _build(path, profile_name, *light)
    return contextvars.copy_context().run(_resolve, path, profile_name, target, dict(vars or {}))


def _resolve(path: Path, profile_name: str, target: str | None,
             cli_vars: dict[str, Any]) -> TargetConfig:
    # dbt's env_var() reads the invocation context; setting it inside a copied context keeps
    # this call from changing the caller's dbt state.
    from dbt.config.profile import Profile, read_profile
    from dbt.config.renderer import ProfileRenderer
    from dbt_common.context import set_invocation_context
    from dbt_common.exceptions import DbtBaseException

    set_invocation_context(os.environ)
    try:
        raw_profiles = read_profile(str(path.parent))
    except DbtBaseException as exc:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(str(exc))}") from None
    if not isinstance(raw_profiles, dict) or profile_name not in raw_profiles:
        names = ", ".join(sorted(k for k in (raw_profiles or {}) if k != "config")) or "none"
        raise ConfigError(f"profile {profile_name!r} not found in {path} (profiles: {names})")
    raw_profile = raw_profiles[profile_name]
    outputs = raw_profile.get("outputs") if isinstance(raw_profile, dict) else None
    if not isinstance(outputs, dict) or not outputs:
        raise ConfigError(f"profile {profile_name!r} in {path} has no outputs")
    available = ", ".join(sorted(outputs))
    raw_secrets = _secret_strings(outputs)
    renderer = ProfileRenderer(cli_vars)
    where = f"profile {profile_name!r} in {path}"
    try:
        if target is None:
            # dbt renders `target:` first (env_var() allowed there); `default` is its fallback.
            target = str(renderer.render_value(raw_profile.get("target", "default")))
        if target not in outputs:
            raise ConfigError(f"target {target!r} not found in {where} (targets: {available})")
        target_name, data = Profile.render_profile(raw_profile, profile_name, target, renderer)
    except DbtBaseException as exc:
        message = scrub(_first_line(str(exc)), raw_secrets)
        raise ConfigError(f"cannot render target {target or '?'!r} of {where}: {message}") from None
    return _build(path, profile_name, target_name, dict(data))


def _build(path: Path, profile_name: str, target_name: str, data: dict[str, Any]) -> TargetConfig:
    where = f"target {target_name!r} of profile {profile_name!r} in {path}"
    kind = str(data.pop("type", "") or "")
    if not kind:
        raise ConfigError(f"{where} has no 'type'")
    if kind not in SUPPORTED_TYPES:
        raise ConfigError(f"{where} has type {kind!r}, which warehouse I/O does not support "
                          f"(supported: {', '.join(SUPPORTED_TYPES)})")
    data.pop("threads", None)
    fields = {_ALIASES[kind].get(k, k): v for k, v in data.items()}
    if kind == "postgres":
        fields.setdefault("port", 5432)
    elif kind == "duckdb":
        fields.setdefault("path", ":memory:")
        fields.setdefault("schema", "main")
        if fields.get("database") is None:
            stem = Path(str(fields["path"])).stem
            fields["database"] = "memory" if fields["path"] == ":memory:" else stem
    missing = [k for k in _REQUIRED[kind] if fields.get(k) in (None, "")]
    if missing:
        raise ConfigError(f"{where} is missing {', '.join(missing)}")
    database = fields.get("database")
    return TargetConfig(type=kind, profile_name=profile_name, target_name=target_name,
                        schema=str(fields["schema"]),
                        database=None if database is None else str(database),
                        fields=fields, profiles_path=path)


def _yaml_problem(text: str) -> str:
    # dbt's message quotes the lines around the error, which may hold a password: keep only
    # PyYAML's own description (what was found where), which never quotes the content.
    raw = text.split("Raw Error:", 1)[-1]
    return " ".join(part.strip(" -") for part in raw.splitlines() if part.strip(" -")) or "?"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    # dbt prefixes messages with a title line such as "Parsing Error" / "Runtime Error".
    if len(lines) > 1 and lines[0].endswith("Error"):
        lines = lines[1:]
    return " ".join(lines)
