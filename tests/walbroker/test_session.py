"""A member's Consume stream on a real broker: what one commit may name."""

from __future__ import annotations

import queue
from collections.abc import Iterator

from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc
from walbroker.client import channel
from walbroker.errors import Code


class RawMember:
    """A Consume stream driven by hand: `send` requests, `next` responses (records skipped)."""

    def __init__(self, address: str, join: pb.Join) -> None:
        self._requests: queue.Queue[pb.ConsumeRequest | None] = queue.Queue()
        self._requests.put(pb.ConsumeRequest(join=join))
        self._channel = channel(address)
        self.call = pb_grpc.BrokerStub(self._channel).Consume(self._outgoing(), timeout=60)

    def _outgoing(self) -> Iterator[pb.ConsumeRequest]:
        while (req := self._requests.get()) is not None:
            yield req

    def send(self, req: pb.ConsumeRequest) -> None:
        self._requests.put(req)

    def next(self, kind: str) -> pb.ConsumeResponse:
        for resp in self.call:
            if resp.WhichOneof("kind") == kind:
                return resp
        raise AssertionError(f"stream ended without a {kind}")

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()
        self._channel.close()


def test_a_commit_naming_more_offsets_than_partitions_is_refused_whole_and_not_echoed(broker):
    """A 50,000-offset commit was answered with its offsets and every foreign partition

    listed (~750 KB per answer); a client sending them without reading grew the broker.
    """
    member = RawMember(broker.address, pb.Join(group="g", topic="four", role=pb.CONSUMER))
    try:
        gen = member.next("assignment").assignment.generation
        offsets = [pb.PartitionOffset(partition=p, offset=0) for p in range(50_000)]
        commit = pb.Commit(commit_id=7, generation=gen, offsets=offsets)
        member.send(pb.ConsumeRequest(commit=commit))
        ack = member.next("commit_ack").commit_ack
        assert ack.commit_id == 7
        assert ack.status.code == Code.INVALID_ARGUMENT
        assert "at most the topic's 4 partitions, not 50000" in ack.status.message
        assert not ack.offsets and ack.ByteSize() < 200
        # A foreign partition is listed by number, only the first few of many.
        member.send(pb.ConsumeRequest(commit=pb.Commit(commit_id=8, generation=gen, offsets=[
            pb.PartitionOffset(partition=p, offset=0) for p in (0, 9)
        ])))  # fmt: skip
        ack = member.next("commit_ack").commit_ack
        assert ack.status.code == Code.FAILED_PRECONDITION, ack.status
        assert "does not own partitions [9]" in ack.status.message
        member.send(pb.ConsumeRequest(commit=pb.Commit(commit_id=9, generation=gen, offsets=[
            pb.PartitionOffset(partition=0, offset=0)
        ])))  # fmt: skip
        assert member.next("commit_ack").commit_ack.status.code == Code.OK
    finally:
        member.close()
