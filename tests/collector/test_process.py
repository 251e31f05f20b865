"""The `gputel-collector` process: SIGTERM after committing, probes, metrics, bad flags."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.collector.helpers import CollectorProcess, Telemetry, lag, wait_exact, wait_for

SPEC_METRICS = [
    "gpu_telemetry_collector_messages_received_total",
    "gpu_telemetry_collector_messages_flushed_total",
    "gpu_telemetry_collector_backlog",
    "gpu_telemetry_collector_flush_latency_seconds_bucket",
    "gpu_telemetry_collector_write_errors_total",
    "gpu_telemetry_collector_dead_lettered_total",
    "gpu_telemetry_collector_store_up",
]


def test_sigterm_flushes_commits_leaves_and_exits_0(broker, collectors, sqlite_target):
    data = Telemetry(broker.address)
    # A long flush interval and a big batch: on SIGTERM the points are still only held.
    c = collectors(sqlite_target, "--flush-ms", "60000", "--batch-size", "50000")
    c.wait_ready()
    data.publish(range(30))
    assert wait_for(lambda: c.metric("gpu_telemetry_collector_backlog") == 2880, 15), c.log()
    assert sum(lag(broker.address).values()) == 2880
    assert c.terminate() == 0, c.log()
    with sqlite_target.open() as store:
        assert store.count_points() == data.expected()
    assert set(lag(broker.address).values()) == {0}
    assert '"msg": "loop stopped", "loop": "collector"' in c.log()


def test_probes_and_spec_metric_names(broker, collectors, sqlite_target):
    data = Telemetry(broker.address)
    c = collectors(sqlite_target)
    c.wait_ready()
    data.publish(range(5))
    with sqlite_target.open() as store:
        wait_exact(store, data.expected(), 15)
    assert c.get("/healthz") == (200, '{"status":"ok"}')
    status, body = c.get("/readyz")
    assert status == 200 and '"ready": true' in body
    assert c.get("/nope")[0] == 404
    _, text = c.get("/metrics")
    for name in SPEC_METRICS:
        assert name in text
    assert wait_for(lambda: c.metric("gpu_telemetry_collector_messages_flushed_total") == 480, 5)
    assert c.terminate() == 0


def test_a_missing_topic_is_one_warning_naming_it_the_broker_and_the_fix(
    broker_factory, sqlite_target, tmp_path
):
    """On a broker without the topic (no --topic for it, no --auto-create-topics) the collector
    logged "consume stream interrupted; rejoining" at info about once a second, forever, and
    its /readyz answered ready while it consumed nothing."""
    b = broker_factory("--partitions", "2").start()
    c = CollectorProcess(b.address, sqlite_target, tmp_path / "collector.log")
    try:
        assert wait_for(lambda: "does not exist" in c.log(), 15), c.log()
        time.sleep(3)  # a few more rejoins
        records = [json.loads(line) for line in c.log().splitlines() if line.startswith("{")]
        missing = [r for r in records if "unknown topic 'telemetry'" in r.get("reason", "")]
        assert len(missing) >= 1 and [r["level"] for r in missing] == ["warning"], c.log()
        msg = missing[0]["msg"]
        assert f"topic 'telemetry' does not exist on the broker at {b.address}" in msg
        assert "--topic telemetry" in msg and "create-topic telemetry" in msg
        assert (missing[0]["topic"], missing[0]["broker"]) == ("telemetry", b.address)
        status, body = c.get("/readyz")  # it consumes nothing: not ready, and says why
        assert status == 503 and json.loads(body)["topic_missing"] is True, body
        admin = [sys.executable, "-m", "walbroker.cli", "admin", "--broker", b.address]
        created = subprocess.run(
            [*admin, "create-topic", "telemetry"], capture_output=True, text=True, timeout=30
        )
        assert created.returncode == 0, created.stderr
        assert wait_for(lambda: '"msg": "assignment"' in c.log(), 15), c.log()  # it kept trying
        c.wait_ready(15)
        assert json.loads(c.get("/readyz")[1])["topic_missing"] is False
    finally:
        assert c.terminate() == 0, c.log()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--store", "sqlite:/tmp/x.db"], "--broker is required"),
        (["--broker", "h:1"], "--store is required"),
        (["--broker", "h:1", "--store", "mysql:x"], "--store must be sqlite:PATH or influx"),
        (["--broker", "nohost", "--store", "sqlite:x"], "--broker must be HOST:PORT"),
        (["--broker", "h:1", "--store", "sqlite:x", "--batch-size", "0"], "must be positive"),
        (["--broker", "h:1", "--store", "sqlite:x", "--bogus"], "unrecognized arguments"),
        (["--broker", "h:1", "--store", "influx"], "GPUTEL_INFLUX_URL"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2(args, message):
    env = {"PATH": "/usr/bin:/bin"}  # no GPUTEL_* from the caller's environment
    proc = subprocess.run(
        [sys.executable, "-m", "collector.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("gputel-collector: error: ")
    assert message in lines[0]
