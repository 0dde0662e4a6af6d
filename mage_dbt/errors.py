"""The one exception hierarchy of mage_dbt.

Every error a user can cause or fix derives from `MageDbtError`: it carries a one-line message, an
optional hint saying what to do next, and the dbt node ids / results it concerns. The CLI prints
`error: <message> (<hint>)` and exits 2 for these, without a traceback. Errors pickle cleanly so
they can cross process boundaries (Prefect workers, backfill worker processes).
"""

from __future__ import annotations

from typing import Any


class MageDbtError(Exception):
    """Base class: a problem the user can understand and fix."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        node_ids: tuple[str, ...] | list[str] = (),
        results: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.node_ids = tuple(node_ids)
        self.results = results

    def __reduce__(self):
        return (_rebuild, (type(self), self.message, self.hint, self.node_ids, self.results))

    def one_line(self) -> str:
        """The message as the CLI shows it: what is wrong, then how to fix it."""
        text = " ".join(self.message.split())
        if self.hint:
            text += f" — {' '.join(self.hint.split())}"
        return text

    def __str__(self) -> str:
        return self.one_line()


def _rebuild(cls, message, hint, node_ids, results):
    return cls(message, hint=hint, node_ids=node_ids, results=results)


class ConfigError(MageDbtError):
    """Project, pipeline or profile configuration is missing or invalid."""


class PipelineNotFound(ConfigError):
    """No `flows/<name>.yaml` for the requested pipeline."""


class SelectionError(MageDbtError):
    """A dbt selector matched nothing or is malformed."""


class DbtProjectError(MageDbtError):
    """The dbt project does not parse, or its profile/target is unusable."""


class BlockError(MageDbtError):
    """A Python or SQL block file is invalid (no decorated function, SQL syntax error, ...)."""


class ExecutionError(MageDbtError):
    """A run failed; `node_ids` names the failed blocks."""

    exit_code = 1


class GitSyncError(MageDbtError):
    """A git sync failed; the message carries git's own `fatal:` line."""


class BackfillError(MageDbtError):
    """A backfill request is invalid or cannot be resumed."""
