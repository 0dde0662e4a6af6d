"""Credentials for git commands: the environment a git process gets, and scrubbing secrets from text.

An HTTPS token reaches git only through `GIT_ASKPASS`: a tiny shell script that holds no secret and
prints the token from the environment of the git process calling it. The token lives in that child
environment and in memory — never in the URL, `.git/config`, a file, a log line, an exception or a
returned object. Credential helpers are switched off while a token is in play, so no helper
configured by the user (e.g. `credential.helper=store`) can write it to disk. SSH keys are passed
with `GIT_SSH_COMMAND`, after checking the key file is private the way ssh itself insists.

`scrub()` is the last line of defence: every piece of git output this package shows is passed
through it, removing the token (plain, URL-encoded and inside a basic-auth header) and any
`user:password@` URL credentials.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import stat
import tempfile
from pathlib import Path
from urllib.parse import quote

from mage_dbt.errors import ConfigError
from mage_dbt.git_sync.config import RepositoryConfig

TOKEN_VAR = "MAGE_DBT_GIT_TOKEN"
USERNAME_VAR = "MAGE_DBT_GIT_USERNAME"
# git asks "Username for '...': " and "Password for '...': "; the script answers from its environment.
ASKPASS_SCRIPT = f"""#!/bin/sh
# mage_dbt GIT_ASKPASS helper. It holds no secret: it prints what the calling git process has in
# its own environment.
case "$1" in
  [Uu]sername*) printf '%s\\n' "${USERNAME_VAR}" ;;
  *) printf '%s\\n' "${TOKEN_VAR}" ;;
esac
"""
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
# Environment for every git command: never prompt on a terminal or in a GUI; fail instead.
_BASE_ENV = {"GIT_TERMINAL_PROMPT": "0", "GCM_INTERACTIVE": "never"}


def scrub(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """`text` with every secret, its URL-encoded and basic-auth forms, and URL credentials replaced by ***."""
    for secret in secrets:
        if not secret:
            continue
        forms = {secret, quote(secret, safe="")}
        for user_part in ("", "x-access-token:", "oauth2:", "git:"):
            forms.add(base64.b64encode(f"{user_part}{secret}".encode()).decode())
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "***")
    return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}***@", text)


def resolve_token(repo: RepositoryConfig) -> str | None:
    """The HTTPS token of `repo`, read at call time from its configured source, or None."""
    if repo.token_env:
        token = os.environ.get(repo.token_env, "")
        if not token.strip():
            raise ConfigError(
                f"environment variable {repo.token_env} (token_env of git sync repository '{repo.name}') is not set",
                hint=f"export {repo.token_env}=<token> before syncing",
            )
        return token.strip()
    if repo.token_secret_block:
        return _secret_block_value(repo)
    return None


def _secret_block_value(repo: RepositoryConfig) -> str:
    """Load the Prefect Secret block lazily: importing Prefect and calling its API only when configured."""
    name = repo.token_secret_block
    try:
        from prefect.blocks.system import Secret

        value = Secret.load(name, _sync=True).get()
    except Exception as exc:  # noqa: BLE001 - any failure means "no token"; the type says why
        raise ConfigError(
            f"Prefect Secret block '{name}' (token_secret_block of git sync repository '{repo.name}') "
            f"could not be loaded ({type(exc).__name__})",
            hint=f"create it with: prefect block create secret (name '{name}'), or use token_env",
        ) from None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"Prefect Secret block '{name}' does not hold a non-empty string token")
    return value.strip()


def ssh_key_file(repo: RepositoryConfig, project_root: Path) -> Path | None:
    """The SSH key path of `repo`, checked to exist and to be private (no group/other permissions)."""
    if not repo.ssh_key_path:
        return None
    key = Path(repo.ssh_key_path).expanduser()
    if not key.is_absolute():
        key = (project_root / key).resolve()
    if not key.is_file():
        raise ConfigError(f"SSH key {key} (ssh_key_path of git sync repository '{repo.name}') does not exist")
    mode = stat.S_IMODE(key.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"SSH key {key} is accessible by group or others (mode {mode:04o}); ssh refuses such keys",
            hint=f"chmod 600 {shlex.quote(str(key))}",
        )
    return key


def ssh_command(key: Path) -> str:
    """The `GIT_SSH_COMMAND` using only `key`, accepting a new host key once, never prompting."""
    return (
        f"ssh -i {shlex.quote(str(key))} -o IdentitiesOnly=yes "
        "-o StrictHostKeyChecking=accept-new -o BatchMode=yes"
    )


class GitCredentials:
    """What one sync's git commands need: extra `-c` options, environment, and the secrets to scrub.

    Use as a context manager: entering resolves the token and writes the askpass script into a
    private temporary folder; leaving deletes it. Nothing happens in the constructor.
    """

    def __init__(self, repo: RepositoryConfig, project_root: Path) -> None:
        self._repo = repo
        self._project_root = Path(project_root)
        self._tmpdir: str | None = None
        self._token: str | None = None
        self.env: dict[str, str] = dict(_BASE_ENV)
        self.config_args: list[str] = []

    def __enter__(self) -> "GitCredentials":
        key = ssh_key_file(self._repo, self._project_root)
        if key is not None:
            self.env["GIT_SSH_COMMAND"] = ssh_command(key)
        self._token = resolve_token(self._repo)
        if self._token is not None:
            self._tmpdir = tempfile.mkdtemp(prefix="mage-dbt-askpass-")
            script = Path(self._tmpdir) / "askpass.sh"
            script.write_text(ASKPASS_SCRIPT, encoding="utf-8")
            script.chmod(0o700)
            self.env.update({
                "GIT_ASKPASS": str(script),
                TOKEN_VAR: self._token,
                USERNAME_VAR: self._repo.username,
                # Traces could print request headers; make sure they are off or redacted.
                "GIT_TRACE_CURL": "0", "GIT_CURL_VERBOSE": "0", "GIT_TRACE_REDACT": "1",
            })
            # An empty helper resets the list: no configured helper can store or replace the token.
            self.config_args = ["-c", "credential.helper=", "-c", "credential.interactive=never"]
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    @property
    def secrets(self) -> tuple[str, ...]:
        """The token, and the basic-auth header value git builds from it."""
        if not self._token:
            return ()
        header = base64.b64encode(f"{self._repo.username}:{self._token}".encode()).decode()
        return (self._token, header)

    def scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    def __repr__(self) -> str:  # never show the environment (it holds the token)
        return f"GitCredentials(repository={self._repo.name!r}, token={'***' if self._token else None})"
