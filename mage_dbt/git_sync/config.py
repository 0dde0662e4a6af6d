"""The git sync configuration: `git_sync/repositories.yaml`, validated.

This module owns the schema (one `RepositoryConfig` per synced repository), loading the YAML file
with errors that name the file and the offending entry, and refusing anything that looks like an
inline secret. Credentials are configured by reference only — the name of an environment variable
or of a Prefect Secret block holding an HTTPS token, or the path of an SSH key — never the secret.
Error messages never echo a value that may be a secret.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path, PurePosixPath
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mage_dbt.errors import ConfigError

CONFIG_FILE = Path("git_sync") / "repositories.yaml"

UrlKind = Literal["https", "http", "ssh", "git", "file", "local"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRANSPORT = re.compile(r"^[A-Za-z0-9+.-]+::")  # git's `<transport>::<address>` (ext::, fd::, ...)
_SCP_LIKE = re.compile(r"^(?:[^@/\s]+@)?[^/:\s]+:(?!//)")
# Prefixes of well-known token formats (GitHub, GitLab, Bitbucket, Slack, OpenAI-style keys).
_TOKEN_PREFIXES = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "glpat-", "gldt-", "ATBB", "xox", "sk-")
# Keys that would hold a secret itself; the config only accepts references to secrets.
_SECRET_KEYS = {
    "token", "password", "passwd", "secret", "access_token", "api_key", "apikey", "private_key",
    "ssh_key", "passphrase", "auth", "credentials", "oauth_token", "pat",
}
_SECRET_QUERY_KEYS = {"token", "access_token", "private_token", "password", "oauth_token", "key"}
_SECRET_HINT = (
    "secrets are never written into the configuration: set token_env (the name of an environment "
    "variable holding the token), token_secret_block (a Prefect Secret block name) or ssh_key_path"
)


def url_kind(url: str) -> UrlKind:
    """Classify a git remote URL the way git does (scheme URL, scp-like SSH, or local path)."""
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        if scheme in ("https", "http", "ssh", "git", "file"):
            return scheme  # type: ignore[return-value]
        if scheme in ("git+ssh", "ssh+git"):
            return "ssh"
        raise ValueError(f"unsupported URL scheme '{scheme}://' (use https://, ssh://, git@host:path or a path)")
    if _SCP_LIKE.match(url) and not re.match(r"^[A-Za-z]:[\\/]", url):
        return "ssh"
    return "local"


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RepositoryConfig(BaseModel):
    """One repository to sync into `dbt_projects/<destination>`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="identifier used by `mage-dbt sync NAME`")
    url: str = Field(description="remote URL without credentials: https://, ssh://, git@host:path or a path")
    ref: str = Field(default="main", description="branch, tag or commit SHA to check out")
    destination: str | None = Field(default=None, description="folder name under dbt_projects/ (default: name)")
    subdirectory: str | None = Field(default=None, description="where the dbt project lives inside the repository")
    submodules: bool = Field(default=False, description="check out git submodules recursively")
    token_env: str | None = Field(default=None, description="environment variable holding an HTTPS token")
    token_secret_block: str | None = Field(default=None, description="Prefect Secret block holding an HTTPS token")
    username: str = Field(default="x-access-token", description="HTTPS basic-auth user sent with the token")
    ssh_key_path: str | None = Field(default=None, description="private key for SSH URLs (mode 600)")
    timeout_seconds: float = Field(default=600, gt=0, description="kill a git command after this long")

    @field_validator("name", "destination")
    @classmethod
    def _simple_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise ValueError("must be a simple folder name: letters, digits, '_', '-', '.', not starting with '.'")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip()
        if not value or value.startswith("-") or any(ch.isspace() for ch in value) or _TRANSPORT.match(value):
            raise ValueError("must be a git URL (https://, ssh://, git@host:path) or a local path")
        kind = url_kind(value)
        if kind != "local" and "://" in value:
            parts = urlsplit(value)
            if parts.password is not None:
                raise ValueError(f"contains a password (user:password@host); {_SECRET_HINT}")
            if kind in ("https", "http") and parts.username is not None:
                if any(parts.username.startswith(p) for p in _TOKEN_PREFIXES) or len(parts.username) >= 30:
                    raise ValueError(f"the user part of the URL looks like a token; {_SECRET_HINT}")
            if any(k.lower() in _SECRET_QUERY_KEYS for k, _ in parse_qsl(parts.query)):
                raise ValueError(f"carries a credential in its query string; {_SECRET_HINT}")
        return value

    @field_validator("ref")
    @classmethod
    def _ref(cls, value: str) -> str:
        return validate_ref(value)

    @field_validator("subdirectory")
    @classmethod
    def _subdirectory(cls, value: str | None) -> str | None:
        if value is None:
            return None
        path = PurePosixPath(value.strip().replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts:
            raise ValueError("must be a relative path inside the repository (no '..', not absolute)")
        text = path.as_posix()
        return None if text in ("", ".") else text

    @field_validator("token_env")
    @classmethod
    def _token_env(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if any(value.startswith(p) for p in _TOKEN_PREFIXES):
            raise ValueError("looks like a token itself; give the NAME of the environment variable that holds it")
        if not _ENV_NAME.match(value):
            raise ValueError("must be an environment variable name (letters, digits, '_')")
        return value

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        if not value or any(ch in value for ch in ":@/") or any(ch.isspace() for ch in value):
            raise ValueError("must be a plain user name (no ':', '@', '/' or spaces)")
        return value

    @field_validator("ssh_key_path")
    @classmethod
    def _ssh_key_path(cls, value: str | None) -> str | None:
        if value is not None and ("BEGIN" in value or "\n" in value or len(value) > 1024):
            raise ValueError(f"looks like a key itself, not a path; {_SECRET_HINT}")
        return value

    @model_validator(mode="after")
    def _credentials_match_url(self) -> "RepositoryConfig":
        sources = [k for k in ("token_env", "token_secret_block", "ssh_key_path") if getattr(self, k)]
        if len(sources) > 1:
            raise ValueError(f"choose one credential source, not {' and '.join(sources)}")
        kind = url_kind(self.url)
        if self.has_token and kind not in ("https", "http"):
            raise ValueError(f"{sources[0]} is for https:// URLs; this URL is {kind}")
        if self.has_token and kind == "http" and not _is_loopback(urlsplit(self.url).hostname):
            raise ValueError("a token would travel unencrypted over http://; use an https:// URL")
        if self.ssh_key_path and kind != "ssh":
            raise ValueError(f"ssh_key_path is for SSH URLs (ssh:// or git@host:path); this URL is {kind}")
        return self

    @property
    def has_token(self) -> bool:
        return bool(self.token_env or self.token_secret_block)

    @property
    def destination_name(self) -> str:
        return self.destination or self.name

    def remote_url(self, project_root: Path) -> str:
        """The URL handed to git: relative local paths are taken relative to the project root."""
        if url_kind(self.url) == "local" and not Path(self.url).expanduser().is_absolute():
            return str((project_root / self.url).resolve())
        return self.url


class GitSyncConfig(BaseModel):
    """The whole `git_sync/repositories.yaml` file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repositories: list[RepositoryConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> "GitSyncConfig":
        for attr in ("name", "destination_name"):
            seen: set[str] = set()
            for repo in self.repositories:
                value = getattr(repo, attr)
                if value in seen:
                    raise ValueError(f"two repositories use the {attr.replace('_name', '')} '{value}'")
                seen.add(value)
        return self

    def get(self, name: str) -> RepositoryConfig:
        for repo in self.repositories:
            if repo.name == name:
                return repo
        known = ", ".join(r.name for r in self.repositories) or "none configured"
        raise ConfigError(f"no git sync repository named '{name}' (known: {known})",
                          hint=f"add it to {CONFIG_FILE}")


def validate_ref(value: str) -> str:
    """A branch, tag or SHA that cannot be mistaken for a git option or a revision expression."""
    value = value.strip() if isinstance(value, str) else value
    if (
        not isinstance(value, str) or not value or value.startswith(("-", "/")) or value.endswith(("/", ".lock", "."))
        or ".." in value or "@{" in value or "//" in value
        or any(ch.isspace() or ch in "~^:?*[\\" or ord(ch) < 32 for ch in value)
    ):
        raise ValueError(f"'{value}' is not a valid branch, tag or commit SHA")
    return value


def find_secret_keys(data: Any) -> list[str]:
    """Dotted paths of keys that look like inline secrets, anywhere in the raw YAML data."""
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                lowered = str(key).lower()
                child = f"{path}.{key}" if path else str(key)
                if lowered in _SECRET_KEYS or "password" in lowered or (
                    lowered.endswith("token") and lowered not in ("token_env", "token_secret_block")
                ):
                    found.append(child)
                walk(value, child)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]")

    walk(data, "")
    return found


def _describe(error: dict[str, Any], data: Any) -> str:
    """One pydantic error as `repositories[0] ('name').field: message`, without the input value."""
    loc = list(error.get("loc", ()))
    where = ""
    if len(loc) >= 2 and loc[0] == "repositories" and isinstance(loc[1], int):
        where = f"repositories[{loc[1]}]"
        try:
            where += f" ('{data['repositories'][loc[1]]['name']}')"
        except (KeyError, IndexError, TypeError):
            pass
        loc = loc[2:]
    field = ".".join(str(part) for part in loc)
    where = ".".join(part for part in (where, field) if part) or "top level"
    message = error.get("msg", "invalid").removeprefix("Value error, ")
    return f"{where}: {message}"


def parse_config(data: Any, source: str) -> GitSyncConfig:
    """Validate already-loaded YAML data; `source` names the file in error messages."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a 'repositories:' list")
    secrets = find_secret_keys(data)
    if secrets:
        raise ConfigError(f"{source}: {', '.join(secrets)} looks like an inline secret", hint=_SECRET_HINT)
    try:
        return GitSyncConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(err, data) for err in exc.errors())
        raise ConfigError(f"{source}: {problems}", hint="see git_sync/repositories.example.yaml") from None


def load_config(project_root: Path, path: Path | None = None) -> GitSyncConfig:
    """Read and validate `git_sync/repositories.yaml` (or `path`) of the project at `project_root`."""
    file = path if path is not None else Path(project_root) / CONFIG_FILE
    if not file.is_file():
        raise ConfigError(f"{file}: git sync configuration not found",
                          hint="copy git_sync/repositories.example.yaml to git_sync/repositories.yaml")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{file}: not valid YAML{where}: {problem}") from None
    return parse_config(data, str(file))
