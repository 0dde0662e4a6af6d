"""The data folder stays bounded: manifest cache variants (the newest per project, never the one
in use), run records (the newest) and the dbt invocation log (rotated by size), besides outputs."""

from __future__ import annotations

import json
import os
import time

from tests.conftest import cli

from mage_dbt.dbt import pruning


def _aged(path, seconds_ago: float):
    stamp = time.time() - seconds_ago
    os.utime(path, (stamp, stamp))
    return path


def _fake_variant(root, project: str, n: int, seconds_ago: float):
    folder = root / f"{project}-{n:032x}-{n:016x}"
    folder.mkdir(parents=True)
    (folder / "nodes.pkl").write_bytes(b"x")
    return _aged(folder, seconds_ago)


def test_manifest_cache_keeps_the_newest_variants_per_project(tmp_path):
    root = tmp_path / "manifest_cache"
    demo = [_fake_variant(root, "my-demo", n, seconds_ago=86400 * (n + 1)) for n in range(14)]
    other = [_fake_variant(root, "other", n, seconds_ago=86400 * 30) for n in range(12)]
    recent = _fake_variant(root, "my-demo", 99, seconds_ago=60)  # in use elsewhere just now
    in_use = demo[-1]  # the oldest: e.g. a long backfill's variant
    removed = pruning.prune_manifest_cache(root, in_use, keep=10)
    kept = sorted(f for f in root.iterdir() if f.name.startswith("my-demo-"))
    assert recent in kept and in_use in kept
    assert set(kept) == {recent, in_use, *demo[:9]}  # the 10 newest (recent + 9), plus the one in use
    assert sorted(removed) == sorted(demo[9:13])
    assert all(f.is_dir() for f in other)  # another project's cache is not this prune's business


def test_run_records_keep_the_newest(tmp_path):
    runs = tmp_path / "runs"
    folders = [_aged(_mk(runs / f"run-{n}"), seconds_ago=100 * n) for n in range(6)]
    current = _aged(_mk(runs / "current"), seconds_ago=10_000)  # an old mtime, but the run writing now
    removed = pruning.prune_run_records(runs, current="current", keep=3)
    assert sorted(removed) == sorted(folders[3:])
    assert sorted(runs.iterdir()) == sorted([current, *folders[:3]])


def test_invocation_log_rotates_by_size(tmp_path):
    log = tmp_path / "dbt_invocations.jsonl"
    log.write_text("x" * 50)
    assert pruning.rotate_log(log, max_bytes=100) is None and log.exists()
    log.write_text("y" * 150)
    rotated = pruning.rotate_log(log, max_bytes=100)
    assert rotated == tmp_path / "dbt_invocations.1.jsonl" and rotated.read_text() == "y" * 150
    assert not log.exists()


def _mk(folder):
    folder.mkdir(parents=True)
    return folder


def test_a_real_parse_prunes_the_cache_and_rotates_the_log(demo_project):
    data = demo_project / ".mage_dbt"
    cache = data / "manifest_cache"
    stale = [_fake_variant(cache, "demo", n, seconds_ago=86400 * (n + 2)) for n in range(12)]
    log = data / "logs" / "dbt_invocations.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text(json.dumps({"command": "old", "pad": "z" * 200}) + "\n")
    big = pruning.INVOCATION_LOG_BYTES // 200 + 1
    with log.open("a") as handle:
        for _ in range(big):
            handle.write(json.dumps({"command": "old", "pad": "z" * 180}) + "\n")

    result = cli(demo_project, "blocks", "demo")  # parses the project: a new cache variant, a log line
    assert result.returncode == 0, result.stderr[-3000:]
    variants = [f for f in cache.iterdir() if f.name.startswith("demo-")]
    assert len(variants) == pruning.MANIFEST_VARIANTS, sorted(f.name for f in variants)
    assert not any(f.exists() for f in stale[9:]) and all(f.exists() for f in stale[:9])
    rotated = log.with_name("dbt_invocations.1.jsonl")
    assert rotated.stat().st_size > pruning.INVOCATION_LOG_BYTES
    assert [json.loads(line)["command"] for line in log.read_text().splitlines()] == ["parse"]
