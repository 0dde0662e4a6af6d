"""`mage-dbt sync`: bring git-synced dbt projects to their ref; a new revision must parse first.

Prints one line per repository: name, ref, old → new commit, whether files changed and whether
`dbt deps` ran. A failure (network, auth, missing ref, a revision that does not parse, local edits)
prints git's own `fatal:` line (or dbt's error) as one line, exits 2, and leaves the previous
revision current.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mage_dbt.cli.console import console, err_console
from mage_dbt.cli.options import ProjectDir, settings_for
from mage_dbt.cli.typer_app import app


class ConsoleLog:
    """A logger-like object for the CLI: info lines on stdout, warnings on stderr."""

    def info(self, message: str, *args: object) -> None:
        console.print(message % args if args else message, highlight=False, soft_wrap=True, markup=False)

    def warning(self, message: str, *args: object) -> None:
        text = message % args if args else message
        err_console.print(f"warning: {text}", highlight=False, soft_wrap=True, markup=False)


@app.command()
def sync(
    name: Optional[str] = typer.Argument(None, help="Repository from git_sync/repositories.yaml (default: all)."),
    ref: Optional[str] = typer.Option(None, "--ref", help="Branch, tag or commit SHA (default: the configured ref)."),
    force: bool = typer.Option(False, "--force", help="Discard local edits in the synced folder instead of refusing."),
    project_dir: Optional[Path] = ProjectDir,
) -> int:
    """Sync git repositories of dbt projects into dbt_projects/ (clone, then fetch).

    The new revision is checked out beside the current one and becomes current only after the dbt
    project parses; `dbt deps` runs only when packages.yml / package-lock.yml / dependencies.yml
    changed. Any failure leaves the previous revision in use.
    """
    from mage_dbt.runs.project_sync import sync_repositories

    settings = settings_for(project_dir)
    sync_repositories(settings, name, ref, force, report=ConsoleLog().info)
    return 0
