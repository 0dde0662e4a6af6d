"""How `--help` shows option types: flags show none.

typer's rich help prints a type for every option, so each flag (`--full-refresh`, `--help`, ...)
reads `<bool>`, as if it took a value. A flag takes none: its type column stays empty. This leans
on typer's `TyperOption.display_type_rich`; tests/test_cli_help.py fails if that stops working.
"""

from __future__ import annotations

from typing import Any


def hide_flag_types() -> None:
    try:
        from typer.core import TyperOption
    except ImportError:  # an older typer without its own option class prints click's help
        return
    original = getattr(TyperOption, "display_type_rich", None)
    if original is None or getattr(original, "_mage_dbt_flags_hidden", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> Any:
        if getattr(self, "is_flag", False):
            return None
        return original(self, ctx)

    display_type_rich._mage_dbt_flags_hidden = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]
