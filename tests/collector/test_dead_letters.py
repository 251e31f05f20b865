"""Poison records go to `<topic>.dlq` byte for byte and their partition keeps flowing."""

from __future__ import annotations

from collector.deadletter import unwrap
from proto.batch import Gpu
from proto.codec import BatchBuilder, encode
from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc
from tests.collector.helpers import TOPIC, Telemetry, lag, wait_exact, wait_for
from walbroker.client import channel
from walbroker.consumer import Consumer
from walbroker.errors import Code
from walbroker.types import partition_for_key

GARBAGE = b"\xff\x00 definitely not a telemetry batch"


def publish_raw(address: str, partition: int, payload: bytes, count: int) -> int:
    """Append one record; return its base offset."""
    req = pb.PublishRequest(
        request_id=1, topic=TOPIC, partition=partition, payload=payload, count=count
    )
    with channel(address) as ch:
        (ack,) = pb_grpc.BrokerStub(ch).Publish(iter([req]), timeout=10)
    assert ack.status.code == Code.OK
    return int(ack.base_offset)


def unstorable_batch(gpu: Gpu) -> bytes:
    """A batch that decodes but that no store accepts (an empty metric name)."""
    b = BatchBuilder()
    for i in range(4):
        b.add(gpu, "", 1_700_000_000_000_000_000 + i, 1.0)
    return encode(b.build())


def read_dead_letters(address: str, want: int) -> list[tuple[dict, bytes]]:
    out: list[tuple[dict, bytes]] = []
    c = Consumer(address, "dlq-reader", f"{TOPIC}.dlq").start()
    try:
        wait_for(lambda: out.extend(unwrap(m.payload) for m in c.poll(0.2)) or len(out) >= want, 15)
    finally:
        c.close()
    return out


def test_poison_records_are_dead_lettered_and_the_partition_keeps_flowing(
    broker, collectors, sqlite_target
):
    data = Telemetry(broker.address)
    data.publish(range(10))
    partition = partition_for_key(data.gpus[0].uuid, 4)
    garbage_at = publish_raw(broker.address, partition, GARBAGE, 7)
    invalid_at = publish_raw(broker.address, partition, unstorable_batch(data.gpus[0]), 4)
    data.publish(range(10, 20))  # behind the poison, on the same partition among others
    c = collectors(sqlite_target)
    with sqlite_target.open() as store:
        counts = wait_exact(store, data.expected(), 30)
    assert counts == data.expected()
    assert wait_for(lambda: set(lag(broker.address).values()) == {0}, 10), lag(broker.address)

    letters = sorted(read_dead_letters(broker.address, 2), key=lambda x: x[0]["base_offset"])
    assert [(h["partition"], h["base_offset"], h["count"], h["reason"]) for h, _ in letters] == [
        (partition, garbage_at, 7, "decode"),
        (partition, invalid_at, 4, "invalid"),
    ]
    assert letters[0][1] == GARBAGE
    assert c.metric('gpu_telemetry_collector_dead_lettered_total{reason="decode"}') == 7
    assert c.metric('gpu_telemetry_collector_dead_lettered_total{reason="invalid"}') == 4
    assert c.log().count("record sent to the dead-letter topic") == 2
    assert c.terminate() == 0
