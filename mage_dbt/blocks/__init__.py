"""Blocks: what a pipeline is made of, and how each kind of non-dbt block runs.

* `block` — the `Block` record and the one translator from dbt node to block;
* `decorators` — Mage's `@data_loader`, `@transformer`, ... (re-exported by `mage_dbt`);
* `python`, `sql`, `dbt_command` (+ `dbt_command_output`) — the block kinds, dispatched by `runners`;
* `support` — what Python and SQL blocks share (relations, the warehouse target, the block logger);
* `outputs` — stored block outputs per run; `edges` — edges inferred between blocks and dbt relations.

Kept free of imports: `mage_dbt/__init__` imports `blocks.decorators` on every `import mage_dbt`.
"""
