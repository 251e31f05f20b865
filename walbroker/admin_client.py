"""A read-only Python client of the broker's Admin service (what the web view and gputel-up use).

Calls go through `walbroker.client.channel`, so the client settings that apply to every
broker connection apply here too; failures are the client's `BrokerError`s.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc

from proto.gen import walbroker_admin_pb2 as apb
from proto.gen import walbroker_admin_pb2_grpc as apb_grpc
from walbroker.client import channel, error_from_rpc
from walbroker.credentials import ClientSecurity

T = TypeVar("T")


class AdminClient:
    """Topics, groups and lag, read from one broker; one channel, thread-safe."""

    def __init__(
        self, address: str, security: ClientSecurity | None = None, timeout_s: float = 5.0
    ) -> None:
        """ValueError when a file of `security` is unusable."""
        self.address = address
        self.timeout_s = timeout_s
        self._channel = channel(address, security)
        self._stub = apb_grpc.AdminStub(self._channel)

    def _call(self, method: Callable[..., T], request: object) -> T:
        try:
            return method(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, self._channel) from None

    def topics(self) -> apb.ListTopicsResponse:
        """Every topic with its offsets and size."""
        resp: apb.ListTopicsResponse = self._call(self._stub.ListTopics, apb.ListTopicsRequest())
        return resp

    def describe_topic(self, topic: str) -> apb.DescribeTopicResponse:
        """One topic, per partition (NotFound when unknown)."""
        resp: apb.DescribeTopicResponse = self._call(
            self._stub.DescribeTopic, apb.DescribeTopicRequest(topic=topic)
        )
        return resp

    def groups(self) -> apb.ListGroupsResponse:
        """Every group with its state and total lag."""
        resp: apb.ListGroupsResponse = self._call(self._stub.ListGroups, apb.ListGroupsRequest())
        return resp

    def describe_group(self, group: str) -> apb.DescribeGroupResponse:
        """One group: members, committed offset and lag per partition (NotFound if unknown)."""
        resp: apb.DescribeGroupResponse = self._call(
            self._stub.DescribeGroup, apb.DescribeGroupRequest(group=group)
        )
        return resp

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()
