"""Mage's block decorators: `@data_loader`, `@transformer`, `@data_exporter`, `@sensor`, `@test`.

A decorator only marks the function (`__mage_dbt_kind__`); `mage_dbt.blocks.python` finds the
marked functions of a block file after executing it. The names are injected into the file's
globals before it runs (as Mage does), so `if 'transformer' not in globals(): from mage_dbt
import transformer` works, and so does a plain `from mage_dbt import transformer`.
"""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

KIND_ATTR = "__mage_dbt_kind__"
BLOCK_KINDS = ("data_loader", "transformer", "data_exporter", "sensor")
TEST_KIND = "test"


def _marker(kind: str) -> Callable[[F], F]:
    def mark(func: F) -> F:
        if not callable(func):
            raise TypeError(f"@{kind} decorates a function, not {type(func).__name__}")
        setattr(func, KIND_ATTR, kind)
        return func

    mark.__name__ = kind
    mark.__qualname__ = kind
    mark.__doc__ = f"Mark the function as this file's {kind} (Mage's @{kind})."
    return mark


data_loader = _marker("data_loader")
transformer = _marker("transformer")
data_exporter = _marker("data_exporter")
sensor = _marker("sensor")
test = _marker(TEST_KIND)
test.__doc__ = "Mark a function that checks the block's output right after it runs (Mage's @test)."

# What a block file finds in its globals before it executes.
DECORATORS: dict[str, Callable] = {
    "data_loader": data_loader,
    "transformer": transformer,
    "data_exporter": data_exporter,
    "sensor": sensor,
    "test": test,
}
