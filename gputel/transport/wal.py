"""walbroker behind the transport boundary: today's gRPC client, adapted, not changed.

`walbroker.producer.Producer` and `walbroker.consumer.Consumer` already speak the boundary's
language; the classes here only add what the protocols name and walbroker answers elsewhere:
a consumer's lag (walbroker's broker exports it per group and partition, so the client
reports none), a producer-group member's view of the group's committed progress (the Admin
service's DescribeGroup) and a single-record producer for dead letters.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from gputel.transport.base import AckCallback
from proto.gen import walbroker_admin_pb2 as apb
from proto.gen import walbroker_admin_pb2_grpc as apb_grpc
from walbroker.client import channel, error_from_rpc
from walbroker.consumer import Assignment, Consumer
from walbroker.credentials import ClientSecurity
from walbroker.inflight import Batch
from walbroker.producer import Producer


class WalConsumer(Consumer):
    """A walbroker consumer-group member (the broker, not the client, exports its lag)."""

    def lag(self) -> dict[int, int]:
        """Nothing: walbroker's own metrics carry lag per group and partition, in points."""
        return {}


def group_progress(
    broker: str,
    group: str,
    topic: str,
    timeout_s: float = 5.0,
    security: ClientSecurity | None = None,
) -> dict[int, int]:
    """Return the committed progress of every partition of `topic` in `group` (Admin RPC)."""
    with channel(broker, security) as ch:
        try:
            resp = apb_grpc.AdminStub(ch).DescribeGroup(
                apb.DescribeGroupRequest(group=group), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, ch) from None
    return {
        pl.partition: pl.committed_offset
        for pl in resp.partitions
        if pl.topic == topic and pl.HasField("committed_offset")
    }


class WalStreamMember(Consumer):
    """A producer-group member: the group hands each live streamer a share of the partitions."""

    def __init__(
        self,
        target: str,
        group: str,
        topic: str,
        *,
        session_timeout_ms: int,
        on_revoke: Callable[[set[int]], None],
        on_assignment: Callable[[Assignment], None],
        security: ClientSecurity | None = None,
    ) -> None:
        super().__init__(
            target, group, topic, role="producer", session_timeout_ms=session_timeout_ms,
            on_revoke=on_revoke, on_assignment=on_assignment, security=security,
        )  # fmt: skip
        self._security = security

    def progress(self) -> dict[int, int]:
        """The group's committed progress of every partition (raises BrokerError)."""
        return group_progress(self.target, self.group, self.topic, security=self._security)


def stream_producer(
    target: str, topic: str, on_ack: AckCallback, **kwargs: object
) -> Producer[object]:
    """The idempotent, pipelined walbroker producer, reporting acks as (partition, points, t)."""

    def acked(batch: Batch, _ack: object) -> None:
        on_ack(batch.partition, batch.count, batch.created)

    return Producer(target, topic, on_ack=acked, **kwargs)  # type: ignore[arg-type]


class WalRecordProducer:
    """Single records (dead letters) through walbroker's idempotent producer."""

    def __init__(
        self, target: str, topic: str, producer_id: str = "", security: ClientSecurity | None = None
    ) -> None:
        self._producer: Producer[bytes] = Producer(
            target, topic, producer_id=producer_id, batch_size=1, security=security
        ).start()

    def send_record(self, key: str, payload: bytes, count: int) -> None:
        """Queue one record on the key's partition; `flush` waits for the broker to store it."""
        self._producer.send_batch(self._producer.partition_of(key), payload, count)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every record sent is acknowledged (TimeoutError, BrokerError)."""
        self._producer.flush(timeout_s)

    def close(self, timeout_s: float = 30.0) -> None:
        """Flush (up to `timeout_s`) and stop the producer's loops."""
        self._producer.close(timeout_s)
