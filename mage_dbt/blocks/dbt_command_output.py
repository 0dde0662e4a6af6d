"""What a generic dbt command block returns and shows: its output dict and its task run log.

The output is plain JSON-able data built from the dbtRunnerResult: `command`, `args`, `success`,
`counts` by status and `nodes` (unique id, status, message, rows affected, failures, freshness
figures), plus the stdout-equivalent of commands that print: the previewed rows of `show`
(`columns`, `rows`, or `previews` for several nodes), the messages a `run-operation` macro logs,
the compiled SQL of a one-node `compile`, catalog counts for `docs generate`.
`OutputEvents` is the dbt callback collecting the printed parts while dbt runs.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
from typing import Any, Mapping

LOG = logging.getLogger("mage_dbt.dbt_command")
BAD_STATUSES = frozenset({"error", "fail", "runtime error"})
MAX_LOGGED_NODES = 200


class OutputEvents:
    """A dbt callback keeping what dbt would print: macro logs, shown and compiled nodes."""

    MESSAGES = frozenset({"JinjaLogInfo", "JinjaLogWarning", "PrintEvent"})

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.shown: list[str] = []  # unique ids dbt prints a preview of (ShowNode)
        self.compiled: dict[str, str] = {}  # unique id -> compiled SQL dbt prints (CompiledNode)

    def __call__(self, event: Any) -> None:
        name = event.info.name
        if name in self.MESSAGES:
            self.messages.append(str(event.data.msg))
        elif name == "ShowNode":
            self.shown.append(event.data.unique_id)
        elif name == "CompiledNode":
            self.compiled[event.data.unique_id] = event.data.compiled


def summarize(command: str, args: list[str], raw: Any, events: OutputEvents) -> dict[str, Any]:
    """The block's output for one dbt invocation."""
    from mage_dbt.dbt.invocation import error_text

    out: dict[str, Any] = {"command": command, "args": list(args), "success": bool(raw.success)}
    problem = error_text(raw)
    if problem:
        out["error"] = problem
    result = getattr(raw, "result", None)
    items = list(getattr(result, "results", None) or ())
    if command != "docs generate":
        nodes = [_node_entry(item) for item in items]
        counts: dict[str, int] = {}
        for node in nodes:
            counts[node["status"]] = counts.get(node["status"], 0) + 1
        out.update(counts=counts, nodes=nodes)
        rows = [n["rows_affected"] for n in nodes if n.get("rows_affected") is not None]
        if rows:
            out["rows_affected"] = sum(rows)
    if command == "show":
        by_id = {item.node.unique_id: item for item in items if getattr(item, "agate_table", None) is not None}
        previews = [_preview(by_id[uid]) for uid in events.shown if uid in by_id]
        out["previews"] = previews
        if len(previews) == 1:
            out.update(columns=previews[0]["columns"], rows=previews[0]["rows"])
    elif command == "compile" and len(events.compiled) == 1:
        out["compiled_code"] = next(iter(events.compiled.values()))
    elif command == "run-operation":
        out.update(macro=next((a for a in args if not a.startswith("-")), None), messages=list(events.messages))
    elif command == "docs generate" and result is not None:
        out["catalog"] = {"nodes": len(getattr(result, "nodes", None) or {}),
                          "sources": len(getattr(result, "sources", None) or {})}
        if getattr(result, "errors", None):
            out["catalog"]["errors"] = [str(e) for e in result.errors]
    return jsonable(out)


def _node_entry(item: Any) -> dict[str, Any]:
    node = getattr(item, "node", None)
    status = getattr(item, "status", None)
    entry: dict[str, Any] = {
        "unique_id": getattr(node, "unique_id", None) or getattr(item, "unique_id", None),
        "status": str(getattr(status, "value", status)).lower(),
    }
    if getattr(item, "message", None):
        entry["message"] = str(item.message)
    response = getattr(item, "adapter_response", None)
    rows = response.get("rows_affected") if isinstance(response, Mapping) else None
    if rows not in (None, ""):
        entry["rows_affected"] = int(rows)
    for key in ("failures", "execution_time", "max_loaded_at", "snapshotted_at", "age"):
        value = getattr(item, key, None)
        if value is not None:
            entry[key] = round(value, 3) if isinstance(value, float) else value
    return entry


def _preview(item: Any) -> dict[str, Any]:
    table = item.agate_table
    columns = [str(c) for c in table.column_names]
    return {"node": item.node.unique_id, "columns": columns,
            "rows": [dict(zip(columns, (jsonable(v) for v in row))) for row in table.rows]}


def jsonable(value: Any) -> Any:
    """Plain JSON data: Decimals become numbers, dates ISO strings, anything else its str()."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def headline(output: Mapping[str, Any]) -> str:
    """One line: `dbt test: 5 pass, 1 warn`, `dbt show: 3 rows`, `dbt run-operation x: 2 message(s)`."""
    if output["command"] == "show" and "rows" in output:
        return f"dbt show: {len(output['rows'])} row(s) of {output['previews'][0]['node']}"
    if output["command"] == "run-operation":
        return f"dbt run-operation {output.get('macro')}: {len(output.get('messages', []))} message(s)"
    if output["command"] == "docs generate":
        catalog = output.get("catalog") or {}
        return f"dbt docs generate: catalog of {catalog.get('nodes', 0)} nodes, {catalog.get('sources', 0)} sources"
    counts = output.get("counts")
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if counts else "no nodes"
    return f"dbt {output['command']}: {parts}"


def failure_text(output: Mapping[str, Any]) -> str:
    """Why the command failed, in one line: the first failed node and dbt's message."""
    bad = [n for n in output.get("nodes", []) if n["status"] in BAD_STATUSES]
    text = f"{headline(output)} (failed)"
    if bad:
        text += f"; {bad[0]['unique_id']}: {bad[0].get('message') or bad[0]['status']}"
        if len(bad) > 1:
            text += f" (and {len(bad) - 1} more)"
    elif output.get("error"):
        text += f": {output['error']}"
    return " ".join(text.split())


def failed_nodes(output: Mapping[str, Any]) -> list[str]:
    return [n["unique_id"] for n in output.get("nodes", []) if n["status"] in BAD_STATUSES and n.get("unique_id")]


def report(reporter: Any, block: str, output: Mapping[str, Any]) -> None:
    """Log the output to the block's Prefect task run (readable text, then `output: <json>`)."""
    lines = [headline(output)]
    if output["command"] == "run-operation":
        lines += [f"  {m}" for m in output.get("messages", [])]
    for preview in output.get("previews", []):
        lines.append(f"  {preview['node']}: {' | '.join(preview['columns'])}")
        lines += [f"  {' | '.join(str(v) for v in row.values())}" for row in preview["rows"]]
    if output.get("compiled_code"):
        lines.append(output["compiled_code"])
    logged = dict(output)
    if len(logged.get("nodes", [])) > MAX_LOGGED_NODES:
        logged["nodes"] = logged["nodes"][:MAX_LOGGED_NODES] + [{"truncated": len(output["nodes"]) - MAX_LOGGED_NODES}]
    level = logging.INFO if output.get("success") else logging.ERROR
    for message in ("\n".join(lines), "output: " + json.dumps(logged, default=str)):
        LOG.log(level, "%s: %s", block, message)
        if reporter is not None:
            reporter.log(block, message, level)
