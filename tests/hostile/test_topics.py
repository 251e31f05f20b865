"""Topics: no auto-creation, a bounded count, Kafka's name rules; topics can be deleted."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import grpc
import pytest

from proto.gen import walbroker_admin_pb2 as apb
from proto.gen import walbroker_pb2 as pb
from tests.hostile.support import GoodClient, admin, assert_unaffected, scrape
from tests.hostile.test_requests import publish
from walbroker.consumer import Consumer
from walbroker.errors import Code


def cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "walbroker.cli", "admin", "--broker", address, *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_unknown_topics_are_refused_and_the_topic_count_is_bounded(hostile_broker):
    """3,000 auto-created topics once slowed an unrelated topic 124x and bloated /metrics."""
    broker = hostile_broker("--max-topics", "20")
    good = GoodClient(broker.address)
    baseline = good.baseline(2)
    reqs = [
        pb.PublishRequest(request_id=i, topic=f"junk-{i}", payload=b"x" * 8, count=1)
        for i in range(3000)
    ]
    acks = publish(broker.address, *reqs)
    assert {a.status.code for a in acks} == {Code.NOT_FOUND}
    assert "unknown topic 'junk-0'" in acks[0].status.message
    stub = admin(broker.address)
    for i in range(19):
        stub.CreateTopic(apb.CreateTopicRequest(topic=f"extra-{i}", partitions=1), timeout=10)
    with pytest.raises(grpc.RpcError) as refused:
        stub.CreateTopic(apb.CreateTopicRequest(topic="one-too-many", partitions=1), timeout=10)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-topics" in refused.value.details()
    for name in ("t" * 250, "bad/name", "..", ""):
        with pytest.raises(grpc.RpcError) as bad:
            stub.CreateTopic(apb.CreateTopicRequest(topic=name, partitions=1), timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_unaffected(baseline, lambda: good.publish_for(2))
    body = urllib.request.urlopen(broker.metrics_url, timeout=10).read()
    assert b"junk-" not in body and len(body) < 200_000
    good.assert_nothing_lost()


def test_delete_topic_frees_the_budget_and_waits_for_live_members(hostile_broker):
    broker = hostile_broker("--topic", "doomed:2")
    good = GoodClient(broker.address)
    baseline = good.baseline(1.5)
    reqs = [
        pb.PublishRequest(request_id=i, topic="doomed", partition=i % 2, payload=b"d" * 10_000,
                          count=10)
        for i in range(200)
    ]  # fmt: skip
    assert {a.status.code for a in publish(broker.address, *reqs)} == {Code.OK}
    log_bytes = scrape(broker.metrics_url, "gpu_telemetry_broker_log_bytes")
    member = Consumer(broker.address, "readers", "doomed").start()
    try:
        member.wait_for_assignment()
        refused = cli(broker.address, "delete-topic", "doomed")
        assert refused.returncode == 5, refused.stderr
        assert "live members (readers)" in refused.stderr
    finally:
        member.close()
    done = cli(broker.address, "delete-topic", "doomed")
    assert done.returncode == 0, done.stderr
    assert "2000000 bytes freed" in done.stdout or "bytes freed" in done.stdout
    after = scrape(broker.metrics_url, "gpu_telemetry_broker_log_bytes")
    assert after <= log_bytes - 2_000_000
    assert "doomed" not in cli(broker.address, "topics").stdout
    acks = publish(broker.address, reqs[0])
    assert acks[0].status.code == Code.NOT_FOUND
    created = cli(broker.address, "create-topic", "doomed", "--partitions", "3")
    assert created.returncode == 0 and "created: 3 partition(s)" in created.stdout
    assert "exists already" in cli(broker.address, "create-topic", "doomed").stdout
    assert_unaffected(baseline, lambda: good.publish_for(1.5))
    good.assert_nothing_lost()
