"""Replay on Kafka, end to end: refused while collectors run (and they are named), applied once
they are stopped, and the re-ingested store still holds exactly K points per series (REST API).
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections import Counter
from pathlib import Path
from uuid import uuid4

from tests.e2e.pipeline import BIN, KafkaTarget, Pipeline, wait_for
from tests.e2e.test_pipeline import csv_file, series, streamers_finish  # noqa: F401 (fixtures)
from tests.kafka_cluster import KafkaCluster

PASSES = 6


def gputel_admin(p: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "gputel-admin"), "--broker", p.broker.address, "--timeout-s", "15", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def exact(p: Pipeline, group: str, expected: set[tuple[str, str]]) -> Counter[tuple[str, str]]:
    """Wait until `group` caught up and the store answers PASSES points per series."""
    assert wait_for(lambda: p.lag(group) == 0, 90), f"collectors still lag: {p.lag(group)}"
    counts: Counter[tuple[str, str]] = Counter()

    def done() -> bool:
        counts.clear()
        counts.update(p.counts())
        return set(counts) == expected and set(counts.values()) == {PASSES}

    assert wait_for(done, 30, interval_s=1.0), f"{len(expected - set(counts))} series missing"
    return counts


def received(collector_metrics_url: str) -> float:
    with urllib.request.urlopen(collector_metrics_url, timeout=5) as resp:
        text = resp.read().decode()
    lines = [
        ln
        for ln in text.splitlines()
        if ln.startswith("gpu_telemetry_collector_messages_received_total")
    ]
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)


def test_replay_on_kafka_needs_stopped_collectors_and_reingests_exactly(
    kafka1: KafkaCluster,
    tmp_path: Path,
    csv_file: Path,  # noqa: F811
    series: set[tuple[str, str]],  # noqa: F811
) -> None:
    target = KafkaTarget(kafka1)
    p = Pipeline(tmp_path, target, ["--store", f"sqlite:{tmp_path / 'store.db'}"], csv_file)
    group = f"collectors-{uuid4().hex[:6]}"  # its own group: the cluster is shared by tests
    replay = ("replay", "--group", group, "--topic", target.topic, "--from-earliest")
    try:
        p.start_gateway()
        collector = p.collector("--group", group, "--client-id", "collector-a").start()
        streamers_finish([p.streamer("--passes", str(PASSES), "--pass-interval", "0.2").start()])
        exact(p, group, series)

        refused = gputel_admin(p, *replay)
        assert refused.returncode == 5, refused.stderr
        assert "has 1 active member(s): collector-a on" in refused.stderr
        assert "kubectl scale deployment <release>-collector --replicas=0" in refused.stderr
        assert p.lag(group) == 0  # nothing moved

        assert collector.terminate() == 0, collector.log_tail()  # leaves the group
        applied = gputel_admin(p, *replay, "--json")
        assert applied.returncode == 0, applied.stderr
        changes = json.loads(applied.stdout)["changes"]
        assert changes and all(c["new_offset"] == c["log_start_offset"] for c in changes)
        described = json.loads(gputel_admin(p, "describe-group", group, "--json").stdout)
        records = sum(c["log_end_offset"] - c["log_start_offset"] for c in changes)
        assert described["group"]["state"] == "empty"
        assert described["group"]["lag_points"] == records > 0

        collector = p.collector("--group", group, "--client-id", "collector-b").start()
        exact(p, group, series)  # re-ingested: idempotent writes keep every count at PASSES
        assert received(collector.metrics_url) == len(series) * PASSES  # all of it, once more
    finally:
        p.stop_all()
