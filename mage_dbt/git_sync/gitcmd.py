"""Running one git command through GitPython, and turning its failure into a `GitCommandFailed`.

Every git process of a sync starts here, with the credentials' environment and `-c` options, a
timeout for network commands, and output scrubbed of secrets. A failure becomes an error whose
message carries git's own `fatal:` line (plus the `error:`/`ssh:` lines that explain it) and a hint
saying what to check. Git's raw output never travels further than this module.
"""

from __future__ import annotations

import logging
from pathlib import Path

import git

from mage_dbt.git_sync.credentials import GitCredentials
from mage_dbt.git_sync.errors import GitCommandFailed

log = logging.getLogger("mage_dbt.git_sync")

_EXPLAINING_PREFIXES = ("fatal:", "error:", "ssh:", "remote: error", "ERROR:", "Permission denied", "Timeout:")
_HINTS = (
    (("Authentication failed", "could not read Username", "could not read Password", "returned error: 403",
      "Permission denied", "Host key verification failed"),
     "check the credentials (token_env / token_secret_block / ssh_key_path) and that they grant read access"),
    (("Could not resolve host", "Failed to connect", "Connection refused", "Could not read from remote",
      "unable to access", "timed out", "Timeout:", "does not appear to be a git repository",
      "not found", "Connection reset"),
     "check the URL and that the git server is reachable from here"),
    (("couldn't find remote ref", "not our ref", "unknown revision", "bad object", "invalid refspec"),
     "check the ref: it must be a branch, tag or commit SHA that exists in the remote repository"),
)


def failure_summary(stderr: str, status: object = None) -> str:
    """git's explaining lines (`fatal:` last, as git prints it), or its last line."""
    lines = [line.strip() for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    picked = [line for line in lines if line.startswith(_EXPLAINING_PREFIXES)]
    if not picked:
        picked = lines[-1:] or [f"git exited with status {status}"]
    return " | ".join(picked[-4:])


def failure_hint(summary: str) -> str | None:
    for needles, hint in _HINTS:
        if any(needle in summary for needle in needles):
            return hint
    return None


class GitRunner:
    """Runs git commands for one repository with its credentials; stateless apart from them."""

    def __init__(self, credentials: GitCredentials, *, timeout: float, label: str) -> None:
        self._credentials = credentials
        self._timeout = timeout
        self._label = label

    def run(self, *args: str, cwd: Path, network: bool = False, what: str | None = None) -> str:
        """Run `git ARGS` in `cwd` and return its stdout; raise `GitCommandFailed` on failure."""
        command = [git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git", *self._credentials.config_args, *args]
        log.debug("git %s (in %s)", " ".join(args), cwd)
        status, stdout, stderr = git.Git(str(cwd)).execute(
            command,
            env=self._credentials.env,
            with_extended_output=True,
            with_exceptions=False,
            kill_after_timeout=self._timeout if network else None,
        )
        if status != 0:
            summary = self._credentials.scrub(failure_summary(str(stderr), status))
            action = what or f"git {args[0]}"
            raise GitCommandFailed(f"{action} failed for '{self._label}': {summary}", hint=failure_hint(summary))
        return self._credentials.scrub(stdout) if self._credentials.secrets else stdout

    def ok(self, *args: str, cwd: Path) -> str | None:
        """Run a local query command; None instead of an error when git says no."""
        try:
            return self.run(*args, cwd=cwd)
        except GitCommandFailed:
            return None
