"""The dbt node listener under dbt's threads: dbt calls node_started / node_finished from several
worker threads at once (threads: 4 in the demo profile). Once in CI a microbatch backfill failed with
"mage_dbt failed while following dbt's events: Set changed size during iteration": one thread read
the listener's set of running nodes while another changed it. Here four threads report every node
of the demo pipeline at once, with the interpreter switching threads as often as it can; every
node must end with a result and none may raise."""

from __future__ import annotations

import sys
import threading


def test_node_events_from_four_threads_at_once_all_land(demo_template):
    from mage_dbt.dbt.invocation import NodeResult
    from mage_dbt.pipelines.pipeline import load_pipeline
    from mage_dbt.runs.block_results import RunSummary
    from mage_dbt.runs.dbt_listener import DbtNodeListener
    from mage_dbt.runs.interrupts import TimeLimits
    from mage_dbt.settings import load_settings

    pipeline = load_pipeline(load_settings(demo_template), "demo")
    ids = sorted(b.unique_id for b in pipeline.blocks.values() if b.unique_id and not b.is_ephemeral)
    errors: list[BaseException] = []
    summaries = []
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter allows
    try:
        for _ in range(20):
            summary = RunSummary(pipeline="demo", execution_date="2024-02-01")
            listener = DbtNodeListener(pipeline, summary, reporter=None)
            listener.next_invocation(TimeLimits(enforced=False))

            def report(share: list[str]) -> None:
                try:
                    for uid in share:
                        listener.node_started(uid)
                        listener.node_finished(NodeResult(unique_id=uid, status="success"))
                except BaseException as exc:  # the failure under test: recorded, asserted below
                    errors.append(exc)

            threads = [threading.Thread(target=report, args=(ids[i::4],)) for i in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            summaries.append(summary)
    finally:
        sys.setswitchinterval(previous)
    assert errors == []
    names = {pipeline.blocks_by_id[u] for u in ids}
    for summary in summaries:
        assert set(summary.results) == names
        assert {r.status for r in summary.results.values()} == {"success"}
