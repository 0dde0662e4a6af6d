"""Dispatch of non-dbt blocks (Python, SQL, generic dbt command) to the module that runs each kind.

Each kind's runner takes the block and a `BlockEnv` (settings, pipeline, run context, the outputs
of upstream blocks, the task run reporter) and returns a `BlockOutcome`. Raising any exception
fails the block; `MageDbtError` messages are shown to the user as they are.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from mage_dbt.errors import ConfigError


@dataclass
class BlockEnv:
    settings: Any
    pipeline: Any
    context: Any
    outputs: dict[str, Any]
    reporter: Any = None


@dataclass
class BlockOutcome:
    output: Any = None
    message: str | None = None
    rows: int | None = None
    writes: tuple[str, ...] = ()  # "schema.table" of the tables the block wrote (recorded for reuse)


# kind -> "module:function"; imported lazily so a pipeline only pays for the kinds it uses.
RUNNERS: dict[str, str] = {
    "python": "mage_dbt.blocks.python:run_python_block",
    "sql": "mage_dbt.blocks.sql:run_sql_block",
    "dbt_command": "mage_dbt.blocks.dbt_command:run_dbt_command_block",
}


def runner_for(kind: str) -> Callable[[Any, BlockEnv], BlockOutcome]:
    target = RUNNERS.get(kind)
    if target is None:
        raise ConfigError(f"unknown block type '{kind}'", hint=f"use one of: {', '.join(sorted(RUNNERS))}")
    module_name, func = target.split(":")
    return getattr(importlib.import_module(module_name), func)


def run_block(block: Any, env: BlockEnv) -> BlockOutcome:
    return runner_for(block.kind)(block, env)
