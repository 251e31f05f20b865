"""The broker process over real gRPC: publish, consume, metadata, health, metrics and bad input."""

from __future__ import annotations

import urllib.request

import grpc
import pytest

from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc
from tests.walbroker.helpers import assert_contiguous, drain, encode, item
from walbroker.client import channel, metadata
from walbroker.errors import Code, NotFound
from walbroker.producer import Producer


def publish_raw(address: str, *requests: pb.PublishRequest) -> list[pb.PublishAck]:
    with channel(address) as ch:
        return list(pb_grpc.BrokerStub(ch).Publish(iter(requests), timeout=10))


def test_publish_then_consume_every_point_once_in_order(broker):
    with Producer(broker.address, "t", encode, batch_size=50, linger_ms=5).start() as p:
        for n in range(2_000):
            p.send(f"gpu-{n % 37}", item(0, n))
    seen, records = drain(broker.address, "t", 2_000)
    assert set(seen) == {item(0, n) for n in range(2_000)}
    assert max(seen.values()) == 1
    assert_contiguous(records)


def test_acks_carry_contiguous_offset_ranges(broker):
    reqs = [
        pb.PublishRequest(request_id=i, topic="t", partition=1, payload=b"x" * 8, count=c)
        for i, c in enumerate([3, 5, 7])
    ]
    acks = publish_raw(broker.address, *reqs)
    assert [a.status.code for a in acks] == [Code.OK] * 3
    assert [(a.base_offset, a.count) for a in acks] == [(0, 3), (3, 5), (8, 7)]
    assert acks[0].publish_time_ns < acks[1].publish_time_ns < acks[2].publish_time_ns


def test_retried_sequence_is_acknowledged_again_not_appended(broker):
    req = pb.PublishRequest(
        request_id=1, topic="t", partition=0, payload=b"abc", count=2, producer_id="p1", sequence=0
    )
    first, again = publish_raw(broker.address, req, req)
    assert (first.base_offset, first.duplicate) == (0, False)
    assert (again.base_offset, again.duplicate, again.status.code) == (0, True, Code.OK)
    skipped = pb.PublishRequest(
        request_id=2, topic="t", partition=0, payload=b"abc", count=2, producer_id="p1", sequence=5
    )
    (ack,) = publish_raw(broker.address, skipped)
    assert ack.status.code == Code.FAILED_PRECONDITION
    with channel(broker.address) as ch:
        assert metadata(ch, ["t"]).topics[0].partitions[0].log_end_offset == 2


@pytest.mark.parametrize(
    ("request_fields", "code"),
    [
        ({"topic": "t", "partition": 0, "payload": b"", "count": 0}, Code.INVALID_ARGUMENT),
        ({"topic": "t", "partition": 0, "payload": b"x", "count": 0}, Code.INVALID_ARGUMENT),
        ({"topic": "t", "partition": 99, "payload": b"x", "count": 1}, Code.INVALID_ARGUMENT),
        (
            {"topic": "bad topic!", "partition": 0, "payload": b"x", "count": 1},
            Code.INVALID_ARGUMENT,
        ),
        (
            {"topic": "t", "partition": 0, "payload": b"x" * (5 << 20), "count": 1},
            Code.INVALID_ARGUMENT,
        ),
    ],
)
def test_bad_batches_get_a_status_code_and_the_broker_keeps_serving(broker, request_fields, code):
    bad = pb.PublishRequest(request_id=1, **request_fields)
    good = pb.PublishRequest(request_id=2, topic="t", partition=0, payload=b"ok", count=1)
    bad_ack, good_ack = publish_raw(broker.address, bad, good)
    assert bad_ack.status.code == code
    assert bad_ack.status.message
    assert good_ack.status.code == Code.OK


def test_garbage_bytes_and_oversized_messages_fail_the_call_cleanly(broker):
    with channel(broker.address) as ch:
        raw = ch.stream_stream(
            "/walbroker.v1.Broker/Publish",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as err:
            list(raw(iter([b"\xff\xfe garbage \x00\x01"]), timeout=5))
        assert err.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.INVALID_ARGUMENT)
        huge = pb.PublishRequest(topic="t", partition=0, payload=b"x" * (33 << 20), count=1)
        with pytest.raises(grpc.RpcError) as err:
            list(pb_grpc.BrokerStub(ch).Publish(iter([huge]), timeout=10))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    (ack,) = publish_raw(broker.address, pb.PublishRequest(topic="t", payload=b"k", count=1))
    assert ack.status.code == Code.OK


def test_consume_must_start_with_join(broker):
    with channel(broker.address) as ch:
        call = pb_grpc.BrokerStub(ch).Consume(
            iter([pb.ConsumeRequest(credit=pb.Credit(points=10))]), timeout=5
        )
        with pytest.raises(grpc.RpcError) as err:
            list(call)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_metadata_lists_topics_partitions_and_the_leader(broker):
    publish_raw(
        broker.address, pb.PublishRequest(topic="a", partition=2, payload=b"x" * 4, count=4)
    )
    with channel(broker.address) as ch:
        md = metadata(ch)
        with pytest.raises(NotFound):
            metadata(ch, ["nope"])
    assert [t.name for t in md.topics] == ["a"]
    assert [p.log_end_offset for p in md.topics[0].partitions] == [0, 0, 4, 0]
    assert {p.leader for p in md.topics[0].partitions} == {md.brokers[0].node_id}
    assert md.brokers[0].address == broker.address


def test_metrics_endpoint_exposes_the_dashboard_names(broker):
    publish_raw(
        broker.address,
        pb.PublishRequest(topic="t", partition=0, payload=encode([1, 2, 3]), count=3),
    )
    drain(broker.address, "t", 3, group="g1")
    body = urllib.request.urlopen(broker.metrics_url, timeout=5).read().decode()
    for name in (
        "gpu_telemetry_broker_messages_enqueued_total",
        "gpu_telemetry_broker_messages_delivered_total",
        "gpu_telemetry_broker_queue_depth",
        "gpu_telemetry_broker_subscribers",
        "gpu_telemetry_broker_fsync_seconds_bucket",
        "gpu_telemetry_broker_log_bytes",
        "gpu_telemetry_broker_log_end_offset",
        "gpu_telemetry_broker_consumer_lag_points",
        "gpu_telemetry_broker_consumer_lag_seconds",
    ):
        assert name in body, name
    assert 'gpu_telemetry_broker_messages_enqueued_total{topic="t"} 3.0' in body
    # declared at 0 when the topic is created, so retention panels have a series from the start
    assert 'gpu_telemetry_broker_retention_deleted_points_total{reason="age",topic="t"} 0.0' in body
    assert 'gpu_telemetry_broker_committed_offset{group="g1",partition="0",topic="t"} 3.0' in body


def test_sigterm_stops_cleanly_and_data_survives(broker):
    publish_raw(
        broker.address, pb.PublishRequest(topic="t", partition=0, payload=b"x" * 5, count=5)
    )
    assert broker.stop() == 0
    assert "broker stopped" in broker.log_text()
    broker.start()
    with channel(broker.address) as ch:
        assert metadata(ch, ["t"]).topics[0].partitions[0].log_end_offset == 5
