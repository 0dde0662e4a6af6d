"""Edges inferred between Python/SQL blocks and dbt relations.

Explicit `upstream:` always counts. On top of it, a block that declares the tables it writes
(`writes:`) becomes upstream of the dbt models reading those tables as sources, and a SQL block
that reads a model's relation becomes downstream of that model.
"""

from __future__ import annotations

from typing import Any


def infer_edges(settings: Any, spec: Any, blocks: dict[str, Any], loaded: Any) -> set[tuple[str, str]]:
    """(upstream, downstream) pairs to add to the pipeline graph."""
    return set()
