"""The one typer app of the `mage-dbt` command line; each `*_cmds` module registers its verbs on it.

Its own module so the verb modules import it without importing the package that imports them
(`mage_dbt.cli` imports every verb module to register it).
"""

from __future__ import annotations

import typer

from mage_dbt.cli.help_format import hide_flag_types

hide_flag_types()  # flags show no `<bool>` in --help

app = typer.Typer(
    name="mage-dbt",
    help="Run dbt projects with Python and SQL blocks as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
