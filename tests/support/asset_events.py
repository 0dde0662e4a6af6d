"""Read the asset events of a flow run back through the Prefect API (`/events/filter`, all pages).

The server persists events asynchronously (its event persister flushes in batches), so readers poll
until the expected number of materializations is there or a deadline passes (no sleeps as
synchronization: a bounded poll of the API)."""

from __future__ import annotations

import os
import time
from datetime import datetime, timedelta, timezone


def _page(client, url: str, body: dict | None):
    response = client.post(url, json=body) if body is not None else client.get(url)
    response.raise_for_status()
    return response.json()


def flow_run_events(run_id: str, prefix: str = "prefect.asset.") -> list[dict]:
    import httpx

    api = os.environ["PREFECT_API_URL"].rstrip("/")
    since = (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat()
    body = {"filter": {"event": {"prefix": [prefix]}, "related": {"id": [f"prefect.flow-run.{run_id}"]},
                       "occurred": {"since": since}}, "limit": 50}
    events: list[dict] = []
    with httpx.Client(timeout=30) as client:
        page = _page(client, f"{api}/events/filter", body)
        events += page["events"]
        while page.get("next_page"):
            page = _page(client, page["next_page"], None)
            events += page["events"]
    return events


def materializations(run_id: str, expected: int, timeout: float = 90.0) -> dict[str, dict]:
    """Asset key -> its materialization event, once at least `expected` of them are stored."""
    deadline = time.monotonic() + timeout
    while True:
        events = flow_run_events(run_id)
        found = {e["resource"]["prefect.resource.id"]: e for e in events
                 if e["event"].startswith("prefect.asset.materialization.")}
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.5)  # polling the API until the server persisted the events, bounded by the deadline


def upstream(event: dict) -> set[str]:
    return {r["prefect.resource.id"] for r in event["related"] if r.get("prefect.resource.role") == "asset"}


def related(event: dict, role: str) -> list[dict]:
    return [r for r in event["related"] if r.get("prefect.resource.role") == role]
