"""The `mage-dbt` command line: one typer app, one module per group of verbs.

Every mistake a user can make ends in a short message and exit code 2, never a traceback:

- our own errors (`MageDbtError`) print one line `error: <what is wrong> — <what to do>`;
- click's usage errors (unknown verb or option, missing argument, a value of the wrong type) print
  click's usual usage line, its "Try ... --help" line and one `Error:` line;
- an `OSError` naming a path (permission denied, read-only file system, disk full, no such folder)
  becomes one `FileSystemError` line naming the path and the fix; an OSError without a path is a
  bug and keeps its traceback.

`mage-dbt` alone prints the help and exits 0. `MAGE_DBT_DEBUG=1` prints the Python traceback above
the error line, for developers.
"""

from __future__ import annotations

import os
import sys
import traceback

import click
import typer
from rich.markup import escape

from mage_dbt.cli.console import console, err_console
from mage_dbt.cli.typer_app import app
from mage_dbt.errors import FileSystemError, MageDbtError

# Each module registers its commands on `app` (cli/typer_app.py) when imported.
from mage_dbt.cli import (  # noqa: F401
    backfill_cmds,
    deploy_cmds,
    output_cmds,
    plan_cmds,
    project_cmds,
    refresh_cmds,
    retry_cmds,
    run_cmds,
    sync_cmds,
)

DEBUG_ENV = "MAGE_DBT_DEBUG"


def main(argv: list[str] | None = None) -> None:
    """The console script: run the CLI, then exit with its code (see `_exit`)."""
    _exit(run_cli(argv))


def run_cli(argv: list[str] | None = None) -> int:
    """Run the CLI with `argv` (default: sys.argv[1:]) and return its exit code; never exits.

    Any exception that is not a user's mistake propagates with its traceback."""
    from mage_dbt.runs.prefect_setup import quiet_prefect_console

    from mage_dbt.runs.interrupts import interruptible

    quiet_prefect_console()
    try:
        with interruptible():  # Ctrl-C: runs end Cancelled, exit 130 (mage_dbt.runs.interrupts)
            result = app(args=argv, standalone_mode=False, prog_name="mage-dbt")
        return result if isinstance(result, int) else 0
    except MageDbtError as exc:
        return _report(exc, exc)
    except OSError as exc:
        converted = FileSystemError.from_os_error(exc)
        if converted is None:
            raise
        return _report(converted, exc)
    except _EXITS as exc:
        return exc.exit_code
    except _ABORTS as exc:
        err_console.print("interrupted" if isinstance(exc.__context__, KeyboardInterrupt) else "aborted")
        return 130
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except _USAGE_ERRORS as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":
            # `mage-dbt` alone: the help, on stdout, exit 0 (typer's rich help is already printed
            # when the exception is made; plain click carries it as the message).
            if exc.format_message():
                console.print(exc.format_message(), markup=False, highlight=False)
            return 0
        exc.show()  # click's usage line, "Try ... --help", and one "Error: ..." line
        return exc.exit_code if isinstance(exc.exit_code, int) and exc.exit_code else 2


def _report(error: MageDbtError, cause: BaseException) -> int:
    if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
        traceback.print_exception(cause)
    err_console.print(f"[bold red]error:[/] {escape(error.one_line())}", highlight=False, soft_wrap=True)
    return error.exit_code


# typer >= 0.22 carries its own copy of click; older typer uses click itself. Catch both.
_EXITS = (click.exceptions.Exit, typer.Exit)
_ABORTS = (click.exceptions.Abort, typer.Abort)
_USAGE_ERRORS = (click.ClickException, getattr(typer, "TyperException", click.ClickException))


def _exit(code: int) -> None:
    """Run exit handlers (they stop Prefect's temporary server), then skip interpreter teardown,
    where DuckDB's bindings print reference-leak warnings that mean nothing to users."""
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
