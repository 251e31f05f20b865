"""Idle streams: 1,000 of them starve nobody; beyond the limits newcomers are refused clearly."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest

from proto.gen import walbroker_admin_pb2 as apb
from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc
from tests.hostile.conftest import wait_metric
from tests.hostile.support import GoodClient, admin, assert_unaffected, health_ok
from tests.hostile.test_metrics_endpoint import threads_of
from tests.support import wait_until

OPEN = "gpu_telemetry_broker_open_streams"


def test_a_thousand_idle_streams_starve_no_health_admin_or_good_client(
    hostile_broker, idle_streams
):
    """60 idle streams once failed health checks, Publish, Metadata and admin calls."""
    # Every client is on loopback here, so the per-address limit is raised above 1,000.
    broker = hostile_broker("--max-streams-per-peer", "1500")
    good = GoodClient(broker.address)
    baseline = good.baseline(1.5)
    idle = idle_streams(broker.address, 1000)
    assert idle.refused == 0, idle.detail
    assert wait_metric(broker.metrics_url, OPEN, 1000) >= 1000
    worst = max(health_ok(broker.address) for _ in range(20))
    assert worst < 0.5, f"health check took {worst:.3f} s"
    t0 = time.monotonic()
    topics = admin(broker.address).ListTopics(apb.ListTopicsRequest(), timeout=5).topics
    assert [t.name for t in topics] == ["good"] and time.monotonic() - t0 < 1.0
    with grpc.insecure_channel(broker.address) as ch:
        md = pb_grpc.BrokerStub(ch).Metadata(pb.MetadataRequest(), timeout=5)
    assert md.topics[0].name == "good"
    assert_unaffected(baseline, lambda: good.publish_for(1.5))
    good.assert_nothing_lost()
    t0 = time.monotonic()  # and SIGTERM with all of them still open stays within its bound
    assert broker.stop(timeout_s=20) == 0
    assert time.monotonic() - t0 < 10.0


def test_streams_beyond_the_limits_are_refused_with_resource_exhausted(
    hostile_broker, idle_streams
):
    # The hostile client comes from 127.0.0.1, the well-behaved one from ::1.
    broker = hostile_broker("--max-streams", "60", "--max-streams-per-peer", "40")
    port = broker.address.rsplit(":", 1)[1]
    broker.stop()
    broker.args += ["--listen", f"localhost:{port}"]
    broker.start()
    good = GoodClient(f"[::1]:{port}")
    baseline = good.baseline(1.5)
    hostile = idle_streams(f"127.0.0.1:{port}", 50)
    assert hostile.refused == 10
    assert "RESOURCE_EXHAUSTED: stream limit reached: 40 open streams from" in hostile.detail
    assert "--max-streams-per-peer" in hostile.detail
    assert_unaffected(baseline, lambda: good.publish_for(1.5))
    more = idle_streams(f"[::1]:{port}", 25)  # now the total limit (40 + 25 > 60)
    assert more.refused == 5 and "60 open streams (--max-streams)" in more.detail
    health_ok(broker.address)
    admin(broker.address).ListGroups(apb.ListGroupsRequest(), timeout=5)
    with pytest.raises(grpc.RpcError) as refused, grpc.insecure_channel(broker.address) as ch:
        list(pb_grpc.BrokerStub(ch).Publish(iter(()), timeout=5))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    more.close()
    hostile.close()
    good.assert_nothing_lost()


def _cancel_without_reading_acks(address: str) -> None:
    """Pipeline small batches on one Publish stream, never read an ack, cancel once the
    broker stops taking more (its ack queue and gRPC's windows are full)."""
    sent = [0]

    def requests() -> Iterator[pb.PublishRequest]:
        while True:
            sent[0] += 1
            yield pb.PublishRequest(
                request_id=sent[0], topic="good", partition=sent[0] % 8, payload=b"x" * 32,
                count=1,
            )  # fmt: skip

    # A fixed receive window (no BDP probing), so the acks it does not read soon fill it.
    with grpc.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)]) as ch:
        call = pb_grpc.BrokerStub(ch).Publish(requests())
        last = -1
        while sent[0] != last:  # flow control holds the client back: the broker is full
            last = sent[0]
            time.sleep(1.0)
        assert sent[0] > 1024
        call.cancel()


def test_a_cancelled_stream_whose_acks_were_never_read_leaves_no_thread(hostile_broker):
    """A stream's reader blocked on its full ack queue once stayed blocked for good after
    the client cancelled: a thread (and up to 1,024 acks) per such stream."""
    broker = hostile_broker()
    assert broker.proc is not None
    _cancel_without_reading_acks(broker.address)  # the worker pool has its thread now
    baseline = threads_of(broker.proc.pid)
    for _ in range(3):
        _cancel_without_reading_acks(broker.address)
    assert wait_until(lambda: threads_of(broker.proc.pid) <= baseline, 15), (
        baseline,
        threads_of(broker.proc.pid),
    )
    health_ok(broker.address)
