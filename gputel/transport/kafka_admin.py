"""`gputel-admin` on Kafka: topics, groups, lag and offset resets, in walbroker admin's messages.

`KafkaAdmin` answers with the same response messages as walbroker's Admin service
(`proto/walbroker_admin.proto`), so `gputel-admin` prints the same tables and the same `--json`
on both transports, and the web view can read either. What differs is Kafka's:

- offsets, log end offsets and lag count Kafka records (one record is one published batch of
  points), not points; the log end offset is the last stable offset (read_committed), which is
  what the collector can read;
- SIZE is not reported (Kafka has no per-partition size in its admin API: use its metrics);
  generation is 0 (the admin API does not expose it);
- a group's offsets can only be changed while the group has no members (Kafka refuses, and
  this module says which members to stop before it even asks); walbroker fences live members
  instead.

Thread-safety: one instance holds one librdkafka admin handle (thread-safe) and makes its
short-lived consumer (used to read record times for OLDEST and LAG SECONDS) per call.
Errors are walbroker's `BrokerError`s, so exit codes match `walbroker admin`'s.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import Any

from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._listoffsets import OffsetSpec
from confluent_kafka.cimpl import NewTopic

from gputel.transport.kafka_lag import (
    NEWEST,
    GroupOffsets,
    group_rows,
    partition_rows,
    stop_members_message,
)
from gputel.transport.kafka_reset import plan_and_apply
from proto.gen import walbroker_admin_pb2 as apb
from walbroker.errors import (
    BrokerError,
    InUse,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from walbroker.reset import ResetTarget

Key = tuple[str, int]
# librdkafka's own log lines go through logging, not straight to stderr.
LIBRDKAFKA_LOG = logging.getLogger("gputel.transport.librdkafka")
_STATES = {
    ConsumerGroupState.STABLE: "stable",
    ConsumerGroupState.PREPARING_REBALANCING: "rebalancing",
    ConsumerGroupState.COMPLETING_REBALANCING: "rebalancing",
    ConsumerGroupState.EMPTY: "empty",
    ConsumerGroupState.DEAD: "dead",
}
_NOT_FOUND = {
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError.GROUP_ID_NOT_FOUND,
}
_DENIED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
}
_IN_USE = {
    KafkaError.NON_EMPTY_GROUP,
    KafkaError.UNKNOWN_MEMBER_ID,
    KafkaError.REBALANCE_IN_PROGRESS,
    KafkaError.GROUP_SUBSCRIBED_TO_TOPIC,
}


def bootstrap_of(url: str) -> str:
    """`HOST:PORT[,…]` of a `kafka://HOST:PORT[,HOST:PORT…]` URL (InvalidArgument otherwise)."""
    rest = url.removeprefix("kafka://")
    servers = [s.strip() for s in rest.split(",")]
    if rest == url or not all(
        s.rpartition(":")[2].isdigit() and s.rpartition(":")[0] for s in servers
    ):
        raise InvalidArgument(f"not a kafka://HOST:PORT[,HOST:PORT…] URL: {url!r}")
    return ",".join(servers)


def error(exc: KafkaException | KafkaError, what: str) -> BrokerError:
    """The walbroker error for a Kafka error while doing `what` (one place for the mapping)."""
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    code = err.code() if isinstance(err, KafkaError) else None
    text = f"{what}: {err.str() if isinstance(err, KafkaError) else err}"
    if code in _DENIED:
        return PermissionDenied(text)
    if code in (KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._AUTHENTICATION):
        return Unauthenticated(text)
    if code in _NOT_FOUND:
        return NotFound(text)
    if code in _IN_USE:
        return InUse(text)
    if code in (KafkaError.INVALID_PARTITIONS, KafkaError.TOPIC_EXCEPTION,
                KafkaError.INVALID_REPLICATION_FACTOR, KafkaError.INVALID_CONFIG):  # fmt: skip
        return InvalidArgument(text)
    if code in (KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN):
        return Unavailable(text)
    return BrokerError(text)


class KafkaAdmin:
    """Admin of one Kafka cluster; `properties` are librdkafka's (from --kafka-config)."""

    def __init__(
        self, bootstrap: str, properties: Mapping[str, str] | None = None, timeout_s: float = 5.0
    ) -> None:
        self.bootstrap, self.timeout_s = bootstrap, timeout_s
        self._props: dict[str, str | int | float | bool] = {
            **(properties or {}),
            "bootstrap.servers": bootstrap,
        }
        # A failed SASL/TLS handshake only reaches error_cb; the call itself just sees no
        # broker. Kept so that "unreachable" can be told apart from "wrong credentials".
        self._auth_failure: KafkaError | None = None
        # confluent-kafka takes a logging.Logger here (documented); its type stub says otherwise.
        self._admin = AdminClient(
            {**self._props, "logger": LIBRDKAFKA_LOG, "error_cb": self._on_error}  # type: ignore[dict-item]
        )

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED):
            self._auth_failure = err

    def _error(self, exc: KafkaException | KafkaError | BrokerError, what: str) -> BrokerError:
        raised = exc if isinstance(exc, BrokerError) else error(exc, what)
        self._admin.poll(0)  # error_cb runs only from poll()
        if isinstance(raised, Unavailable) and self._auth_failure is not None:
            return Unauthenticated(f"{what}: {self._auth_failure.str()}")
        return raised

    def close(self) -> None:
        """Nothing to release eagerly: librdkafka's handle goes with the object."""

    # ---- reads -----------------------------------------------------------------------------

    def _wait(self, future: Future[Any], what: str) -> Any:
        try:
            return future.result(timeout=self.timeout_s)
        except KafkaException as exc:
            raise self._error(exc, what) from None
        except TimeoutError:
            unanswered = Unavailable(
                f"{what}: no answer from {self.bootstrap} in {self.timeout_s:g}s"
            )
            raise self._error(unanswered, what) from None

    def partition_counts(self, topics: Iterable[str] | None = None) -> dict[str, int]:
        """Partitions of each topic (all non-internal topics by default; NotFound if unknown)."""
        try:
            meta = self._admin.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise self._error(exc, f"cluster {self.bootstrap}") from None
        counts = {n: len(t.partitions) for n, t in meta.topics.items() if not n.startswith("__")}
        if topics is None:
            return dict(sorted(counts.items()))
        missing = [t for t in topics if t not in counts]
        if missing:
            raise NotFound(f"unknown topic {missing[0]!r}")
        return {t: counts[t] for t in topics}

    def _list_offsets(self, keys: Iterable[Key], spec: OffsetSpec) -> dict[Key, Any]:
        # read_committed: the end is the last stable offset, what a collector can read.
        request = {TopicPartition(t, p): spec for t, p in keys}
        if not request:
            return {}
        futures = self._admin.list_offsets(
            request, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=self.timeout_s
        )
        return {
            (tp.topic, tp.partition): self._wait(f, f"offsets of {tp.topic}/{tp.partition}")
            for tp, f in futures.items()
        }

    def offsets(self, keys: Iterable[Key], spec: OffsetSpec) -> dict[Key, int]:
        """The offset `spec` names for each partition (-1: no such record, for a time)."""
        return {k: int(info.offset) for k, info in self._list_offsets(keys, spec).items()}

    def newest_times_ns(self, keys: Iterable[Key]) -> dict[Key, int]:
        """Timestamp of the newest record of each partition that has one."""
        infos = self._list_offsets(keys, NEWEST)
        return {k: int(i.timestamp) * 1_000_000 for k, i in infos.items() if i.timestamp >= 0}

    def record_times_ns(self, positions: Mapping[Key, int]) -> dict[Key, int]:
        """Timestamp of the record at each position (missing when there is none to read)."""
        if not positions:
            return {}
        # Assigned, never subscribed and never committing: this group id leaves no trace.
        group_id = f"gputel-admin-{uuid.uuid4().hex}"
        consumer = Consumer(
            {**self._props, "group.id": group_id, "enable.auto.commit": False,
             "isolation.level": "read_committed", "logger": LIBRDKAFKA_LOG}
        )  # fmt: skip
        times: dict[Key, int] = {}
        try:
            consumer.assign([TopicPartition(t, p, o) for (t, p), o in positions.items()])
            deadline = time.monotonic() + self.timeout_s
            while len(times) < len(positions) and time.monotonic() < deadline:
                for msg in consumer.consume(len(positions), timeout=0.2):
                    key = (msg.topic() or "", msg.partition() or 0)
                    if msg.error() is None and key not in times:
                        times[key] = msg.timestamp()[1] * 1_000_000
                        consumer.incremental_unassign([TopicPartition(*key)])
        finally:
            consumer.close()
        return times

    def topics(self) -> apb.ListTopicsResponse:
        """Every topic with its offsets and publish times."""
        counts = self.partition_counts()
        rows = partition_rows(self, counts)
        return apb.ListTopicsResponse(topics=[_summary(t, n, rows[t]) for t, n in counts.items()])

    def describe_topic(self, topic: str) -> apb.DescribeTopicResponse:
        """One topic, per partition, with the groups that have offsets on it (NotFound)."""
        counts = self.partition_counts([topic])
        rows = partition_rows(self, counts)[topic]
        groups = [g.group for g in self.group_offsets() if any(t == topic for t, _ in g.committed)]
        return apb.DescribeTopicResponse(
            topic=_summary(topic, counts[topic], rows), partitions=rows, groups=sorted(groups)
        )

    def group_names(self) -> list[str]:
        """Every consumer group the cluster knows."""
        result = self._wait(
            self._admin.list_consumer_groups(request_timeout=self.timeout_s), "groups"
        )
        return sorted(g.group_id for g in result.valid)

    def group_offsets(self, names: Iterable[str] | None = None) -> list[GroupOffsets]:
        """Members and committed offsets of each group (all groups by default)."""
        names = self.group_names() if names is None else list(names)
        if not names:
            return []
        described = self._admin.describe_consumer_groups(names, request_timeout=self.timeout_s)
        out = []
        for name in names:
            desc = self._wait(described[name], f"group {name!r}")
            req = [ConsumerGroupTopicPartitions(name)]
            fut = self._admin.list_consumer_group_offsets(req, request_timeout=self.timeout_s)
            listed = self._wait(fut[name], f"offsets of group {name!r}")
            committed = {(tp.topic, tp.partition): tp.offset for tp in listed.topic_partitions
                         if tp.offset >= 0}  # fmt: skip
            state, simple = _STATES.get(desc.state, "unknown"), bool(desc.is_simple_consumer_group)
            out.append(GroupOffsets(name, state, desc.members, committed, simple))
        return out

    def groups(self) -> apb.ListGroupsResponse:
        """Every group with its state and total lag (in records)."""
        return apb.ListGroupsResponse(groups=[s for s, _ in group_rows(self, self.group_offsets())])

    def describe_group(self, group: str) -> apb.DescribeGroupResponse:
        """One group: members, and committed offset and lag per partition (NotFound)."""
        g = self._known_group(group)
        ((summary, lags),) = group_rows(self, [g])
        members = [
            apb.GroupMember(member_id=m.member_id, client_id=m.client_id, host=m.host,
                            partitions=sorted(tp.partition for tp in m.assignment.topic_partitions))
            for m in g.members
        ]  # fmt: skip
        return apb.DescribeGroupResponse(group=summary, members=members, partitions=lags)

    def _known_group(self, group: str) -> GroupOffsets:
        (g,) = self.group_offsets([group])
        if g.state == "dead" and not g.committed:
            raise NotFound(f"unknown group {group!r}")
        return g

    # ---- changes ---------------------------------------------------------------------------

    def create_topic(
        self, topic: str, partitions: int, replication_factor: int = -1
    ) -> apb.CreateTopicResponse:
        """Create `topic` (replication factor: the cluster's default unless given)."""
        new = NewTopic(topic, num_partitions=partitions, replication_factor=replication_factor)
        futures = self._admin.create_topics([new], request_timeout=self.timeout_s)
        created = True
        try:
            futures[topic].result(timeout=self.timeout_s)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise self._error(exc, f"create topic {topic!r}") from None
            created = False
        counts, rows = self._await_topic(topic)
        return apb.CreateTopicResponse(topic=_summary(topic, counts[topic], rows), created=created)

    def _await_topic(self, topic: str) -> tuple[dict[str, int], list[apb.PartitionExtent]]:
        # Creation returns before every broker knows the topic and its partitions have leaders
        # ("unknown topic", "not leader"): ask again until they do, within the timeout.
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                counts = self.partition_counts([topic])
                return counts, partition_rows(self, counts)[topic]
            except (NotFound, BrokerError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def delete_topic(self, topic: str, force: bool = False) -> apb.DeleteTopicResponse:
        """Delete `topic`; refused (InUse) while a group with members has offsets on it."""
        self.partition_counts([topic])
        busy = [
            g for g in self.group_offsets() if g.members and any(t == topic for t, _ in g.committed)
        ]
        if busy and not force:
            raise InUse(f"groups with live members consume {topic!r}: "
                        f"{', '.join(g.group for g in busy)} (stop them, or --force)")  # fmt: skip
        futures = self._admin.delete_topics([topic], request_timeout=self.timeout_s)
        self._wait(futures[topic], f"delete topic {topic!r}")
        return apb.DeleteTopicResponse(topic=topic)

    def delete_group(self, group: str) -> apb.DeleteGroupResponse:
        """Forget `group` and its committed offsets; refused (InUse) while it has members."""
        g = self._known_group(group)
        if g.members:
            raise InUse(stop_members_message(g, "delete it"))
        futures = self._admin.delete_consumer_groups([group], request_timeout=self.timeout_s)
        self._wait(futures[group], f"delete group {group!r}")
        return apb.DeleteGroupResponse(group=group, offsets_deleted=len(g.committed))

    def reset_offsets(
        self, group: str, topic: str, partitions: Iterable[int], target: ResetTarget, dry_run: bool
    ) -> apb.ResetOffsetsResponse:
        """Plan, and unless `dry_run` apply, new committed offsets (InUse while it has members)."""
        return plan_and_apply(self, self._known_group(group), topic, partitions, target, dry_run)

    def alter_offsets(self, g: GroupOffsets, topic: str, offsets: Mapping[int, int]) -> None:
        """Commit `offsets` for group `g` on `topic` (Kafka refuses while it has members)."""
        tps = [TopicPartition(topic, p, o) for p, o in sorted(offsets.items())]
        request = [ConsumerGroupTopicPartitions(g.group, tps)]
        futures = self._admin.alter_consumer_group_offsets(request, request_timeout=self.timeout_s)
        try:
            result = futures[g.group].result(timeout=self.timeout_s)
        except KafkaException as exc:
            raised = self._error(exc, f"reset of group {g.group!r}")
            raise (
                InUse(stop_members_message(g, "reset it")) if isinstance(raised, InUse) else raised
            ) from None
        failed = [tp for tp in result.topic_partitions if tp.error is not None]
        if failed:
            raise self._error(
                failed[0].error, f"reset of group {g.group!r}, partition {failed[0].partition}"
            )


def _summary(topic: str, partitions: int, rows: list[apb.PartitionExtent]) -> apb.TopicSummary:
    first = [r.first_publish_ns for r in rows if r.first_publish_ns]
    return apb.TopicSummary(
        name=topic,
        partitions=partitions,
        log_start_offset=sum(r.log_start_offset for r in rows),
        log_end_offset=sum(r.log_end_offset for r in rows),
        first_publish_ns=min(first, default=0),
        last_publish_ns=max((r.last_publish_ns for r in rows), default=0),
    )
