"""The `mage-dbt` command line: one typer app, one module per group of verbs.

User mistakes (`MageDbtError`) print one line `error: ...` with the fix and exit 2, no traceback.
"""

from __future__ import annotations

import sys

import click
import typer

from mage_dbt.cli.console import err_console
from mage_dbt.errors import MageDbtError

app = typer.Typer(
    name="mage-dbt",
    help="Run dbt projects with Python and SQL blocks as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module registers its commands on `app` when imported.
from mage_dbt.cli import (  # noqa: E402,F401
    backfill_cmds,
    deploy_cmds,
    output_cmds,
    project_cmds,
    refresh_cmds,
    retry_cmds,
    run_cmds,
    sync_cmds,
)


def main(argv: list[str] | None = None) -> None:
    from mage_dbt.prefect_setup import quiet_prefect_console

    quiet_prefect_console()
    try:
        result = app(args=argv, standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except MageDbtError as exc:
        err_console.print(f"[bold red]error:[/] {exc.one_line()}", highlight=False, soft_wrap=True)
        code = exc.exit_code
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        err_console.print("aborted")
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = 2
    _exit(code)


def _exit(code: int) -> None:
    """Run exit handlers (they stop Prefect's temporary server), then skip interpreter teardown,
    where DuckDB's bindings print reference-leak warnings that mean nothing to users."""
    import atexit
    import os

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
