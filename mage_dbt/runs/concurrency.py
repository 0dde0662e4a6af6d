"""Concurrency slots of a pipeline run: Prefect global concurrency limits, held while the run works.

A run takes one slot of each limit that applies to it, all at once (Prefect grants them together or
not at all), before it touches the warehouse, and gives them back when its blocks are done:

- `concurrency: {limit: N}` in the pipeline file: `mage-dbt-pipeline:<pipeline>` (or
  `mage-dbt-group:<name>` with `name:`, shared by the pipelines naming it);
- one writer per DuckDB file, always: `mage-dbt-duckdb:<file name>-<hash of its path>`, limit 1;
- `target_concurrency: {<dbt target>: K}` in mage_dbt.yaml: `mage-dbt-target:<target>`, limit K;
- a flow run tagged `mage-dbt-slot:<limit>=<N>` (`slot_tag`): that limit too (the intervals of a
  backfill submitted to a work pool: `mage_dbt.backfill.pool_runs`).

The limits are created (or their limit updated) on the server by `mage-dbt deploy` and by the run
itself on first use, so CLI runs, deployment runs, workers and backfill workers (all of them run
the pipeline flow's body, `mage_dbt.runs.pipeline_run`) share them. A run that has to wait logs so,
and its flow run's state message says so while it waits (not for flows with retries: `_say_in_state`);
`concurrency: {max_wait_seconds: S}` bounds the wait (`SlotWaitTimeout`, one line). The slots are
leased: a run whose process dies frees them when the lease ends (`LEASE_SECONDS`), without anyone
cleaning up; on the same host at once, when the next run finds them taken (`mage_dbt.runs.run_liveness`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from mage_dbt.errors import MageDbtError
from mage_dbt.pipelines.policy_checks import concurrency_limit_name

DUCKDB_PREFIX = "mage-dbt-duckdb:"
TARGET_PREFIX = "mage-dbt-target:"
SLOT_TAG = "mage-dbt-slot:"  # a flow run tag naming one more limit the run holds (`slot_tag`)
FIRST_TRY_SECONDS = 2.0  # a run that gets no slot within this says it waits
SLOW_SERVER_RETRIES = 3  # tries again when a try timed out while every limit had room (`acquire`)
SLOW_SERVER_SECONDS = 10.0  # ...each given at least this long
LEASE_SECONDS = 60  # renewed while the run works; frees the slots this long after a process died


class SlotWaitTimeout(MageDbtError):
    """A run waited longer than the pipeline's `concurrency: max_wait_seconds` for its slots."""


@dataclass(frozen=True)
class Slot:
    """One global concurrency limit a run takes a slot of: its Prefect name, its limit, and why (for logs)."""

    name: str
    limit: int
    why: str


def pipeline_slots(spec: Any) -> list[Slot]:
    """The slot of the pipeline's own `concurrency:` limit (none without one)."""
    name = concurrency_limit_name(spec)
    if name is None:
        return []
    label = f"concurrency group '{spec.concurrency.name}'" if spec.concurrency.name else f"pipeline '{spec.name}'"
    return [Slot(name, spec.concurrency.limit, label)]


def target_slots(settings: Any, target: Any) -> list[Slot]:
    """The warehouse slots of a run on `target` (a rendered `TargetConfig`): its DuckDB file, its named limit."""
    slots = []
    limit = settings.file.target_concurrency.get(target.target_name)
    if limit:
        slots.append(Slot(TARGET_PREFIX + target.target_name, limit, f"dbt target '{target.target_name}'"))
    slot = duckdb_slot(target)
    return slots + ([slot] if slot else [])


def duckdb_slot(target: Any) -> Slot | None:
    """The one-writer slot of `target`'s DuckDB file (None: no local DuckDB file)."""
    path = duckdb_file(target)
    if not path:
        return None
    digest = hashlib.sha256(path.encode()).hexdigest()[:12]
    return Slot(f"{DUCKDB_PREFIX}{os.path.basename(path)}-{digest}", 1, f"DuckDB file {path}")


def held_by_a_run(target: Any) -> bool:
    """True when a mage_dbt run holds `target`'s DuckDB slot now: a new run waits for it instead of
    being refused because the file is in use (`check_before_flow_run`). False when unknown."""
    from prefect.settings import PREFECT_API_URL

    slot = duckdb_slot(target)
    if slot is None or not PREFECT_API_URL.value():  # no server to ask (a temporary one starts with the run)
        return False
    try:
        return bool(busy([slot]))
    except Exception:  # noqa: BLE001 — no server yet: the file probe decides, as before
        return False


def duckdb_file(target: Any) -> str | None:
    """The local DuckDB file `target` writes to (None: another warehouse, in memory, or remote)."""
    path = str(target.get("path", ":memory:"))
    if target.type != "duckdb" or path.startswith((":memory:", "md:", "motherduck:")) or "://" in path:
        return None
    return os.path.abspath(path)


def run_slots(settings: Any, resolved: Any, context: Any = None) -> list[Slot]:
    """Every slot a run of the resolved pipeline takes. The warehouse's only when the run can write to it
    (dbt blocks, SQL and dbt command blocks, Python blocks with `writes:`)."""
    from mage_dbt.blocks.support import block_target

    spec = resolved.spec
    writes = spec.dbt is not None or any(
        b.type != "python" or b.option("writes") for b in spec.blocks)
    slots = pipeline_slots(spec)
    if writes:
        slots += target_slots(settings, block_target(settings, resolved, context))
    return slots


def slot_tag(slot: Slot) -> str:
    """A flow run tag that makes the run hold `slot` too (`tagged_slots`): how a backfill submitted to a
    work pool bounds its intervals' runs, wherever they run."""
    return f"{SLOT_TAG}{slot.name}={slot.limit}"


def tagged_slots(tags: Any) -> list[Slot]:
    """The slots named by a flow run's `slot_tag` tags."""
    slots = []
    for tag in tags or ():
        name, _, limit = str(tag).removeprefix(SLOT_TAG).rpartition("=")
        if str(tag).startswith(SLOT_TAG) and name and limit.isdigit() and int(limit) > 0:
            slots.append(Slot(name, int(limit), f"limit {name}"))
    return slots


def ensure_limits(slots: list[Slot]) -> None:
    """Create the slots' limits on the server, or set their limit when it changed (idempotent)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for slot in slots:
            client.upsert_global_concurrency_limit_by_name(slot.name, slot.limit)


def busy(slots: list[Slot]) -> list[str]:
    """The slots whose limit is taken right now, as `why (used/limit)` (a snapshot, for messages)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found = []
    with get_client(sync_client=True) as client:
        for slot in slots:
            try:
                limit = client.read_global_concurrency_limit_by_name(slot.name)
            except ObjectNotFound:
                continue
            if limit.active and limit.active_slots >= limit.limit:
                found.append(f"{slot.why} ({limit.active_slots}/{limit.limit} in use)")
    return found


@contextmanager
def holding_slots(slots: list[Slot], logger: Any, *, max_wait: float | None = None,
                  flow_run_id: str | None = None, data_dir: Path | None = None) -> Iterator[None]:
    """Hold one slot of each of `slots` while the block runs; wait for them first, saying so.

    With the project's `data_dir`, the leases are written down under the run's folder while held, and
    a limit found full first gets back the slots of runs whose process is gone (`run_liveness`)."""
    if not slots:
        yield
        return
    from prefect.concurrency.context import ConcurrencyContext
    from prefect.concurrency.sync import concurrency

    from mage_dbt.runs import run_liveness

    ensure_limits(slots)
    _quiet_expected_timeouts()
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder

    holder = ConcurrencyLeaseHolder(type="flow_run", id=flow_run_id) if flow_run_id else None  # shown in the UI
    names = [s.name for s in slots]

    def take(timeout: float | None) -> Any:
        return concurrency(names, occupy=1, timeout_seconds=timeout, lease_duration=LEASE_SECONDS, strict=True,
                           holder=holder)

    def on_wait(message: str) -> None:
        logger.warning(message)  # also on the CLI's console, which shows warnings only
        _say_in_state(flow_run_id, message)

    def holders() -> list[str]:
        freed = run_liveness.release_dead(data_dir)
        if freed:
            logger.warning("gave back the concurrency slots of %d run(s) whose process is gone (marked Crashed): %s",
                           len(freed), ", ".join(freed))
        return busy(slots)

    with ExitStack() as held:
        leases = held.enter_context(ConcurrencyContext())  # where Prefect notes the lease it grants
        waited = acquire(lambda timeout: held.enter_context(take(timeout)), holders,
                         [s.why for s in slots], max_wait, on_wait)
        held.enter_context(run_liveness.leases_recorded(data_dir, flow_run_id, leases.cleanup_lease_ids))
        if waited is not None:
            logger.info("got the concurrency slot(s) after %.1f s", waited)
            _say_in_state(flow_run_id, None)
        yield


class _ExpectedTimeouts(logging.Filter):
    """Drops Prefect's "Service 'ConcurrencySlotAcquisitionWithLeaseService' failed to process item ...
    raised TimeoutError>" ERROR line: a try that times out is how `acquire` finds that a run must wait
    (it says so itself, as a warning); users read that ERROR as their run failing."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        item = args[1] if len(args) == 2 and args[0] == "ConcurrencySlotAcquisitionWithLeaseService" else None
        future = item[-1] if isinstance(item, tuple) and item else None
        return not (isinstance(future, Future) and future.done() and not future.cancelled()
                    and isinstance(future.exception(), TimeoutError))


_EXPECTED_TIMEOUTS = _ExpectedTimeouts()


def _quiet_expected_timeouts() -> None:
    logging.getLogger("prefect._internal.concurrency").addFilter(_EXPECTED_TIMEOUTS)  # added once however often called


def acquire(enter: Callable[[float | None], Any], holders: Callable[[], list[str]], whys: list[str],
            max_wait: float | None, on_wait: Callable[[str], None],
            clock: Callable[[], float] = time.monotonic) -> float | None:
    """Take the slots with `enter(timeout)` (raises TimeoutError when they are not granted in time);
    the seconds waited, or None when they came at once (nothing said).

    A first short try; when it times out and a limit is full (`holders()`), `on_wait` says so and
    the run waits, at most `max_wait` seconds in all (`SlotWaitTimeout`). A try that times out while
    every limit has room lost its time to a slow server, not to other runs: it is tried again (up to
    SLOW_SERVER_RETRIES times, each given at least SLOW_SERVER_SECONDS), so a loaded server never
    fails a run that nobody was blocking (CI saw `max_wait_seconds: 1` fail the only run)."""
    started = clock()
    timeout: float | None = min(FIRST_TRY_SECONDS, max_wait or FIRST_TRY_SECONDS)
    waiting = False
    slow_server_retries = 0
    while True:
        try:
            enter(timeout)
            return clock() - started if waiting else None
        except TimeoutError:
            full = holders()
        left = None if max_wait is None else max_wait - (clock() - started)
        if not full and slow_server_retries < SLOW_SERVER_RETRIES:
            slow_server_retries += 1
            timeout = SLOW_SERVER_SECONDS if left is None else max(left, SLOW_SERVER_SECONDS)
            continue
        if not waiting:
            waiting = True
            bound = f", at most {max_wait:g} s" if max_wait else ""
            on_wait(f"waiting for a concurrency slot{bound}: {'; '.join(full) or ', '.join(whys)}")
        if left is not None and left <= 0:
            raise SlotWaitTimeout(
                f"gave up after waiting {clock() - started:.0f} s for a concurrency slot "
                f"(max_wait_seconds: {max_wait:g}): {'; '.join(full) or ', '.join(whys)}",
                hint="the runs holding the slots are still running; raise max_wait_seconds or run later",
            )
        timeout = left


def _say_in_state(flow_run_id: str | None, message: str | None) -> None:
    """Show `message` as the Running flow run's state message (None: clear it); best effort.

    Prefect counts every move into Running as a run (`run_count`), and flow retries stop when the count
    passes `retries`: a flow run with retries keeps its state, and says it in its log only."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    retries = ctx.flow_run.empirical_policy.retries if ctx and ctx.flow_run else None
    if not flow_run_id or retries or (ctx and ctx.flow and ctx.flow.retries):
        return
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    try:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run_id, Running(message=message), force=True)
    except Exception:  # noqa: BLE001 — the message is a courtesy; the log line already said it
        pass
