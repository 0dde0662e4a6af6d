"""The JSON-log executor: the `dbt` CLI as a subprocess, its node events read from `--log-format json`.

This is the path for dbt engines without Python callbacks (the dbt v2 engine ships as a binary):
nothing of dbt is imported into this process. The command line is the in-process executor's
(`plan_invocation`: selection, `--vars`, target, `--full-refresh`, event-time window), plus
`--log-format json --log-level debug`. Each stdout line is one dbt event; the lines naming an event
`NodeEvents` handles (NodeStart, NodeFinished, the microbatch batch events, GenericExceptionOnRun)
are decoded and given to it as if dbt had called it in-process, so a node's task run starts when
dbt starts it and ends with its status, timing, rows and message. The debug level is needed
because NodeStart/NodeFinished (the ones carrying `run_result` with `adapter_response.rows_affected`)
are debug events; the other debug lines (SQL, connections) are skipped by a substring test before
any JSON decoding. Final statuses come from `run_results.json` in the process's target folder,
as the in-process executor takes them from dbt's result object.

Costs and limits, by design of the CLI:
- The CLI parses the project on every invocation: the cached manifest cannot be handed to it.
  `--partial-parse` with this process's own target folder (its `partial_parse.msgpack` kept)
  saves the parse only when the vars did not change, i.e. between the invocations of one run
  (retry rounds, full-refresh phases); a run for another date parses in full, which the bench shows.
- dbt writes manifest.json and run_results.json (the latter is what this executor reads).
- A microbatch retry of only the failed batches (`only_failed_batches`) needs dbt's in-memory
  manifest: here the whole event-time window runs again, with a warning.
- Ctrl-C and timeouts: the subprocess runs in its own session; this process forwards one SIGINT
  (dbt cancels its queries), then reads what dbt still reports, for at most `stop_grace_seconds`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from mage_dbt.context import RunContext
from mage_dbt.dbt.child_stop import forwarding_stops
from mage_dbt.dbt.executor import plan_invocation, settle_results
from mage_dbt.dbt.invocation import InvocationOutcome, NodeEvents, NodeListener, NodeResult, first_lines, log_invocation
from mage_dbt.dbt.manifest import LoadedManifest

LOG = logging.getLogger("mage_dbt.dbt")
# Substrings that mark a line worth decoding: the events NodeEvents handles, and error-level lines.
_MARKS = tuple(f'"{name}"' for name in NodeEvents._EVENTS)
_ERROR_MARK = '"level": "error"'


def dbt_cli() -> list[str]:
    """The dbt CLI of this virtualenv (next to the Python running mage_dbt)."""
    script = Path(sys.executable).parent / "dbt"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dbt.cli.main"]


class _Fields(dict):
    """A decoded JSON object read like dbt's event objects (`event.data.node_info.unique_id`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            value = self[name]
        except KeyError:
            raise AttributeError(name) from None
        return _Fields(value) if isinstance(value, dict) else value


class JsonLogReader:
    """Feeds dbt's JSON log lines to a `NodeEvents`; keeps error lines and non-JSON output."""

    def __init__(self, events: NodeEvents) -> None:
        self._events = events
        self.errors: list[str] = []
        self.other: deque[str] = deque(maxlen=20)  # the tail of what was not a JSON event

    def feed(self, line: str) -> None:
        if not line.startswith("{"):
            if line.strip():
                self.other.append(line.rstrip())
            return
        is_error = _ERROR_MARK in line
        if not is_error and not any(mark in line for mark in _MARKS):
            return
        try:
            event = _Fields(json.loads(line))
        except ValueError:
            self.other.append(line.rstrip())
            return
        if is_error and len(self.errors) < 20:
            message = event.get("info", {}).get("msg") or ""
            if message:
                self.errors.append(message)
        if "info" in event and "data" in event:
            self._events(event)

    def problem(self, returncode: int) -> str | None:
        """What went wrong with the invocation itself (None when dbt just reported failed nodes)."""
        if returncode in (0, 1):  # 1: some node failed; each says why in its own result
            return None
        if returncode < 0:
            return f"dbt CLI exited with signal {-returncode} ({signal.Signals(-returncode).name})"
        text = first_lines("\n".join(self.errors)) or first_lines("\n".join(self.other))
        return text or f"dbt CLI exited with code {returncode}"


def results_from_file(path: Path) -> dict[str, NodeResult]:
    """Node results from a run_results.json (the authoritative statuses); {} when there is none."""
    if not path.is_file():
        return {}
    out: dict[str, NodeResult] = {}
    for item in json.loads(path.read_text()).get("results") or ():
        rows = (item.get("adapter_response") or {}).get("rows_affected")
        batches = item.get("batch_results") or {}
        out[item["unique_id"]] = NodeResult(
            unique_id=item["unique_id"],
            status=str(item.get("status") or "").lower(),
            message=item.get("message"),
            execution_time=float(item.get("execution_time") or 0.0),
            rows_affected=int(rows) if rows not in (None, "") else None,
            failures=item.get("failures"),
            batches_ok=_windows(batches.get("successful")),
            batches_failed=_windows(batches.get("failed")),
        )
    return out


def _windows(pairs: Iterable[Sequence[str]] | None) -> tuple[tuple[str, str], ...]:
    def iso(text: str) -> str:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc).isoformat()

    return tuple((iso(start), iso(end)) for start, end in pairs or ())


class SubprocessJsonDbtExecutor:
    """Runs a node group as one `dbt` CLI process, reporting nodes from its JSON log."""

    def __init__(self, command: Sequence[str] | None = None, *, stop_grace_seconds: float = 60.0) -> None:
        self._command = list(command) if command else None
        self._grace = stop_grace_seconds

    def run_nodes(
        self,
        loaded: LoadedManifest,
        unique_ids: Sequence[str],
        *,
        context: RunContext,
        listener: NodeListener,
        command: str = "build",
        full_refresh: bool = False,
    ) -> InvocationOutcome:
        ref = loaded.ref
        plan = plan_invocation(loaded, unique_ids, context=context, command=command, full_refresh=full_refresh)
        if plan.retry_batches:
            LOG.warning("the json_log dbt executor re-runs every batch of %s, not only the failed ones",
                        ", ".join(sorted(loaded.nodes[u].name for u in plan.retry_batches)))
        args = [*plan.args, "--log-format", "json", "--log-level", "debug", "--partial-parse"]
        results_file = ref.target_path / "run_results.json"
        results_file.unlink(missing_ok=True)  # never read the previous invocation's
        events = NodeEvents(listener, wanted=set(plan.wanted), microbatch=set(plan.microbatch))
        reader = JsonLogReader(events)
        env = {**os.environ, "DO_NOT_TRACK": "1", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
        started = time.perf_counter()
        process = subprocess.Popen(
            [*(self._command or dbt_cli()), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, bufsize=1, env=env,
            start_new_session=True,  # Ctrl-C reaches it once, forwarded by us (see the module docstring)
        )
        try:
            self._read(process, reader)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            if process.stdout:
                process.stdout.close()
        success = process.returncode == 0
        log_invocation(plan.args, invocation_log=ref.invocation_log, node_count=len(unique_ids),
                       seconds=time.perf_counter() - started, success=success, cached_manifest=False,
                       note={**(plan.note() or {}), "executor": "json_log"})
        problem = reader.problem(process.returncode)
        results = settle_results(loaded, plan, listener, events, results_from_file(results_file),
                                 success=success, problem=problem)
        return InvocationOutcome(success=success, results=results, error=problem)

    def _read(self, process: subprocess.Popen, reader: JsonLogReader) -> None:
        """Feed dbt's output to the reader to its end. Ctrl-C and time limits reach dbt as one SIGINT
        (`mage_dbt.dbt.child_stop`): dbt stops as it would in-process, and no line is lost."""
        assert process.stdout is not None
        with forwarding_stops(process, self._grace) as stop:
            while True:
                try:
                    for line in process.stdout:
                        reader.feed(line)
                    return
                except KeyboardInterrupt:  # Python's own SIGINT handling (no interruptible()): stop dbt
                    stop.request()
