"""The gRPC adapter of the Admin service: topics, groups, lag and offset resets.

Thin: the numbers come from the log, `walbroker.lag` and `walbroker.reset`.
Every call is an *admin action*: logged (one structured line with the request
and the result) and counted in `gpu_telemetry_broker_admin_actions_total{action}`.
BrokerError ends the call through `walbroker.status.abort` (NOT_FOUND for an
unknown topic or group, INVALID_ARGUMENT for a bad request).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from proto.gen import walbroker_admin_pb2 as apb
from proto.gen import walbroker_admin_pb2_grpc as apb_grpc
from walbroker.errors import BrokerError, InUse, InvalidArgument, NotFound
from walbroker.group import GroupCoordinator
from walbroker.lag import (
    GroupStanding,
    group_lags,
    group_standings,
    known_groups,
    producer_progress,
)
from walbroker.log import Log
from walbroker.metrics import BrokerMetrics
from walbroker.reset import OffsetChange, ResetTarget, TargetKind, apply_reset, plan_reset
from walbroker.status import abort
from walbroker.types import PartitionInfo, TopicPartition, validate_name

log = logging.getLogger(__name__)

SERVICE_NAME = "walbroker.v1.Admin"

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Handler = Callable[["AdminServicer", Req, Any], Resp]

_INT64_MAX = 2**63 - 1
_TARGETS: dict[str, TargetKind] = {
    "to_earliest": "earliest",
    "to_latest": "latest",
    "to_offset": "offset",
    "to_time_ns": "time",
    "shift_by": "shift",
}


def admin_action(action: str) -> Callable[[Handler[Req, Resp]], Handler[Req, Resp]]:
    """Log and count a call as `action`; a BrokerError ends it with its status code."""

    def wrap(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
        @functools.wraps(fn)
        def rpc(self: AdminServicer, request: Req, context: Any) -> Resp:
            started = time.monotonic()
            result = "OK"
            try:
                return fn(self, request, context)
            except BrokerError as exc:
                result = exc.code.name
                abort(context, exc)
            finally:
                self.metrics.admin_actions.labels(action).inc()
                log.info(
                    "admin action",
                    extra={
                        "action": action,
                        "request": MessageToDict(request, preserving_proto_field_name=True),
                        "result": result,
                        "duration_ms": round((time.monotonic() - started) * 1000, 1),
                    },
                )

        return rpc

    return wrap


class AdminServicer:
    """The Admin service over one log and one coordinator (duck-typed to the generated base)."""

    def __init__(self, wal: Log, coordinator: GroupCoordinator, metrics: BrokerMetrics) -> None:
        self.wal = wal
        self.coordinator = coordinator
        self.metrics = metrics

    @admin_action("list_topics")
    def ListTopics(self, request: apb.ListTopicsRequest, context: Any) -> apb.ListTopicsResponse:
        return apb.ListTopicsResponse(topics=[self._topic(t) for t in sorted(self.wal.topics)])

    @admin_action("describe_topic")
    def DescribeTopic(
        self, request: apb.DescribeTopicRequest, context: Any
    ) -> apb.DescribeTopicResponse:
        validate_name("topic", request.topic)
        n = self.wal.partition_count(request.topic)
        infos = [self.wal.state(TopicPartition(request.topic, p)).info() for p in range(n)]
        known = known_groups(self.wal, self.coordinator)
        on_topic = sorted(g for g, topics in known.items() if request.topic in topics)
        return apb.DescribeTopicResponse(
            topic=self._topic(request.topic),
            partitions=[_extent(i) for i in infos],
            groups=on_topic,
        )

    @admin_action("list_groups")
    def ListGroups(self, request: apb.ListGroupsRequest, context: Any) -> apb.ListGroupsResponse:
        standings = group_standings(self.wal, self.coordinator)
        return apb.ListGroupsResponse(groups=[_summary(s) for s in standings])

    @admin_action("describe_group")
    def DescribeGroup(
        self, request: apb.DescribeGroupRequest, context: Any
    ) -> apb.DescribeGroupResponse:
        group = validate_name("group", request.group)
        standings = group_standings(self.wal, self.coordinator, group)
        if not standings:
            raise NotFound(f"unknown group {group!r}")
        view = self.coordinator.describe(group)
        resp = apb.DescribeGroupResponse(group=_summary(standings[0]))
        for m in view.members if view else ():
            resp.members.add(
                member_id=m.member_id, client_id=m.client_id, partitions=m.partitions, host=m.host
            )
        rows = group_lags(self.wal, self.coordinator, group) + producer_progress(self.wal, group)
        for row in rows:
            pl = resp.partitions.add(
                topic=row.tp.topic,
                partition=row.tp.partition,
                owner=self.coordinator.owner(group, row.tp.partition)
                if view is not None and view.topic == row.tp.topic
                else "",
                log_end_offset=row.log_end_offset,
                lag_points=row.lag_points,
                lag_seconds=row.lag_seconds,
            )
            if row.committed is not None:
                pl.committed_offset = row.committed
        return resp

    @admin_action("reset_offsets")
    def ResetOffsets(
        self, request: apb.ResetOffsetsRequest, context: Any
    ) -> apb.ResetOffsetsResponse:
        kind = request.WhichOneof("target")
        if kind is None:
            raise InvalidArgument("a target is required (to_earliest, to_offset, ...)")
        target = ResetTarget(_TARGETS[kind], int(getattr(request, kind)))
        changes = plan_reset(
            self.wal, self.coordinator, request.group, request.topic, request.partitions, target
        )
        if not request.dry_run:
            apply_reset(self.coordinator, request.group, request.topic, changes)
            log.warning(
                "offsets reset",
                extra={
                    "group": request.group,
                    "topic": request.topic,
                    "changes": {c.partition: [c.old_offset, c.new_offset] for c in changes},
                },
            )
        return apb.ResetOffsetsResponse(
            group=request.group,
            topic=request.topic,
            changes=[_change(c) for c in changes],
            applied=not request.dry_run,
        )

    @admin_action("create_topic")
    def CreateTopic(self, request: apb.CreateTopicRequest, context: Any) -> apb.CreateTopicResponse:
        existed = request.topic in self.wal.topics
        partitions = request.partitions or self.wal.config.default_partitions
        self.wal.create_topic(request.topic, partitions)
        return apb.CreateTopicResponse(topic=self._topic(request.topic), created=not existed)

    @admin_action("delete_topic")
    def DeleteTopic(self, request: apb.DeleteTopicRequest, context: Any) -> apb.DeleteTopicResponse:
        topic = validate_name("topic", request.topic)
        live = self.coordinator.live_groups_on(topic)
        if live and not request.force:
            raise InUse(
                f"topic {topic!r} has groups with live members ({', '.join(sorted(live))}); "
                "stop them first or use --force"
            )
        freed = self._topic(topic).size_bytes
        for group in self.coordinator.forget_topic(topic):
            log.warning("group removed with its topic", extra={"group": group, "topic": topic})
        self.wal.delete_topic(topic)
        return apb.DeleteTopicResponse(topic=topic, freed_bytes=freed)

    @admin_action("delete_group")
    def DeleteGroup(self, request: apb.DeleteGroupRequest, context: Any) -> apb.DeleteGroupResponse:
        group = validate_name("group", request.group)
        offsets = self.wal.offsets.keys_of(group)
        if group not in self.coordinator.groups() and not offsets:
            raise NotFound(f"unknown group {group!r}")
        if not self.coordinator.remove_if_empty(group):
            raise InUse(f"group {group!r} has live members; stop them first")
        if offsets:
            self.wal.delete_group_offsets(group)
        self.metrics.groups_expired.labels("deleted").inc()
        self.metrics.forget_group(group)
        return apb.DeleteGroupResponse(group=group, offsets_deleted=len(offsets))

    def _topic(self, topic: str) -> apb.TopicSummary:
        n = self.wal.partition_count(topic)
        infos = [self.wal.state(TopicPartition(topic, p)).info() for p in range(n)]
        firsts = [i.first_publish_ns for i in infos if i.first_publish_ns]
        return apb.TopicSummary(
            name=topic,
            partitions=n,
            log_start_offset=sum(i.log_start_offset for i in infos),
            log_end_offset=sum(i.log_end_offset for i in infos),
            size_bytes=sum(i.size_bytes for i in infos),
            first_publish_ns=min(firsts, default=0),
            last_publish_ns=max((i.last_publish_ns for i in infos), default=0),
        )


def add_to_server(
    server: grpc.Server, wal: Log, coordinator: GroupCoordinator, metrics: BrokerMetrics
) -> None:
    """Register the Admin service on a broker's gRPC server."""
    apb_grpc.add_AdminServicer_to_server(AdminServicer(wal, coordinator, metrics), server)


def _extent(i: PartitionInfo) -> apb.PartitionExtent:
    return apb.PartitionExtent(
        partition=i.tp.partition,
        log_start_offset=i.log_start_offset,
        log_end_offset=i.log_end_offset,
        size_bytes=i.size_bytes,
        first_publish_ns=i.first_publish_ns,
        last_publish_ns=i.last_publish_ns,
    )


def _summary(s: GroupStanding) -> apb.GroupSummary:
    return apb.GroupSummary(
        name=s.group,
        topic=s.topic,
        role=s.role,
        state=s.state,
        generation=s.generation,
        members=s.members,
        lag_points=s.lag_points,
        lag_seconds=s.lag_seconds,
        ignored_by_retention=s.ignored_by_retention,
    )


def _change(c: OffsetChange) -> apb.OffsetChange:
    out = apb.OffsetChange(
        partition=c.partition,
        new_offset=c.new_offset,
        requested_offset=min(c.requested_offset, _INT64_MAX),
        clamped=c.clamped,
        log_start_offset=c.log_start_offset,
        log_end_offset=c.log_end_offset,
    )
    if c.old_offset is not None:
        out.old_offset = c.old_offset
    return out
