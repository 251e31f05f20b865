"""Bad requests: each fails alone with INVALID_ARGUMENT; nobody else's batch fails with it."""

from __future__ import annotations

import multiprocessing as mp
import re
import time
from typing import Any

import grpc
import pytest

from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc
from tests.hostile.support import GoodClient, assert_unaffected, health_ok, scrape
from walbroker.client import channel
from walbroker.credentials import ClientSecurity
from walbroker.errors import Code


def publish(address: str, *reqs: pb.PublishRequest, timeout_s: float = 30) -> list[pb.PublishAck]:
    with channel(address) as ch:
        return list(pb_grpc.BrokerStub(ch).Publish(iter(reqs), timeout=timeout_s))


def end_offsets(address: str, topic: str, security: ClientSecurity | None = None) -> list[int]:
    with channel(address, security) as ch:
        md = pb_grpc.BrokerStub(ch).Metadata(pb.MetadataRequest(topics=[topic]), timeout=10)
    return [p.log_end_offset for p in md.topics[0].partitions]


def _long_producer_ids(address: str, seconds: float, out: Any) -> None:
    """The hostile client (own process): 1,000 batches/s with a 600-byte producer id."""
    codes: list[int] = []
    message = ""
    t0 = time.monotonic()
    i = 0
    while time.monotonic() - t0 < seconds:
        reqs = [
            pb.PublishRequest(
                request_id=i + j, topic="good", partition=j % 8, payload=b"x" * 64, count=1,
                producer_id="p" * 600, sequence=i + j,
            )
            for j in range(100)
        ]  # fmt: skip
        acks = publish(address, *reqs)
        codes += [a.status.code for a in acks]
        message = message or acks[0].status.message
        i += 100
        time.sleep(0.3)  # ~300 bad batches/s: the point is their errors, not their CPU
    out.put((codes, message))


def test_long_producer_id_fails_alone_and_never_an_innocent_batch(hostile_broker):
    """The 600-byte producer_id case: it once failed every batch of its group commit."""
    broker = hostile_broker()
    good = GoodClient(broker.address)
    baseline = good.baseline(2)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    hostile = ctx.Process(target=_long_producer_ids, args=(broker.address, 10.0, out))
    hostile.start()
    time.sleep(1.0)  # the attack is under way
    assert_unaffected(baseline, lambda: good.publish_for(1.5))
    codes, message = out.get(timeout=60)
    hostile.join(30)
    assert len(codes) >= 1500
    assert set(codes) == {Code.INVALID_ARGUMENT}
    assert "producer_id of 600 bytes exceeds the limit of 128" in message
    good.assert_nothing_lost()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"payload": b"x", "count": 1_000_000}, "declares 1000000 points in 1 bytes"),
        ({"payload": b"x" * 10, "count": 0}, "empty batch"),
        ({"partition": 8}, "partition 8 out of range"),
        ({"topic": "t" * 250}, "invalid topic name"),
        ({"topic": "bad/name"}, "invalid topic name"),
        ({"topic": ".."}, "invalid topic name"),
        ({"producer_id": "a\x00b"}, "must not contain NUL"),
        ({"fence_group": "g" * 300, "producer_id": "p"}, "invalid fence_group name"),
        ({"fence_group": "g", "fence_epoch": 1}, "a fenced batch needs a producer_id"),
    ],
)
def test_bad_fields_are_invalid_argument_and_move_no_offset(hostile_broker, fields, message):
    broker = hostile_broker()
    before = end_offsets(broker.address, "good")
    req = {"topic": "good", "partition": 1, "payload": b"x" * 8, "count": 1, **fields}
    (ack,) = publish(broker.address, pb.PublishRequest(**req))
    assert ack.status.code == Code.INVALID_ARGUMENT
    assert message in ack.status.message
    good = GoodClient(broker.address)
    assert good.publish_for(0.5) > 0
    assert sum(end_offsets(broker.address, "good")) == sum(before) + len(good.acked)
    good.assert_nothing_lost()


def _garbage_calls(address: str) -> list[grpc.StatusCode]:
    """Frames that are not protobuf, and a string field that is not UTF-8, on every method."""
    bad_utf8 = b"\x12\x02\xff\xfe"  # field 2 (topic), 2 bytes, invalid UTF-8
    codes = []
    with grpc.insecure_channel(address) as ch:
        for method in ("Publish", "Consume"):
            call = ch.stream_stream(f"/walbroker.v1.Broker/{method}")
            for frame in (b"\xff\xff\xff\xff", bad_utf8):
                try:
                    list(call(iter([frame]), timeout=10))
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
        unary = ch.unary_unary("/walbroker.v1.Broker/Metadata")
        try:
            unary(b"\x0a\x02\xff\xfe", timeout=10)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    return codes


def test_malformed_frames_are_invalid_argument_and_sigterm_still_exits_in_time(hostile_broker):
    """The malformed-frame hang: SIGTERM once hung in 7 of 13 runs after such a frame."""
    broker = hostile_broker()
    good = GoodClient(broker.address)
    baseline = good.baseline(1.5)
    for _ in range(3):
        codes = _garbage_calls(broker.address)
        assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}, codes
        health_ok(broker.address)
        assert_unaffected(baseline, lambda: good.publish_for(1.5))
        good.assert_nothing_lost()
        _garbage_calls(broker.address)
        t0 = time.monotonic()
        assert broker.stop(timeout_s=15) == 0
        assert time.monotonic() - t0 < 10.0
        broker.start()


@pytest.mark.parametrize("field", ["client_id", "member_id"])
def test_an_oversized_join_identifier_ends_that_stream_alone_and_is_counted(hostile_broker, field):
    broker = hostile_broker()
    join = pb.Join(group="g", topic="good", role=pb.CONSUMER, **{field: "m" * 300})
    with channel(broker.address) as ch:
        call = pb_grpc.BrokerStub(ch).Consume(iter([pb.ConsumeRequest(join=join)]), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            next(iter(call))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")
    invalid = 'gpu_telemetry_broker_invalid_requests_total{method="Consume"}'
    assert scrape(broker.metrics_url, re.escape(invalid)) == 1
    health_ok(broker.address)
