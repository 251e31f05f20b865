"""Broker configuration: frozen dataclasses built from CLI flags and GPUTEL_BROKER_* in `cli`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from walbroker.security import SecurityConfig

FsyncPolicy = Literal["always", "interval"]
RetentionPolicy = Literal["block", "drop-oldest"]

MiB = 1024 * 1024
GiB = 1024 * MiB
# The LMDB map (what the log file may grow to): 2 x the budget plus room for B-tree
# overhead, offsets and producer state, and never under a floor, whatever the budget.
MAP_HEADROOM_BYTES = 64 * MiB
MAP_FLOOR_BYTES = 256 * MiB


@dataclass(frozen=True, slots=True)
class LogConfig:
    """How the log stores, syncs and retains data."""

    data_dir: Path
    default_partitions: int = 16
    fsync: FsyncPolicy = "always"
    fsync_interval_ms: int = 50
    # Disk budget for stored records (keys + values); the LMDB map is sized from it.
    retention_bytes: int = 8 * GiB
    # Records older than this are deleted (0 = keep until the byte budget needs room).
    retention_age_s: float = 0.0
    retention_policy: RetentionPolicy = "block"
    retention_check_s: float = 5.0
    # One budget for the recent records kept in memory, shared by every partition.
    hot_buffer_bytes: int = 64 * MiB
    max_batch_bytes: int = 4 * MiB
    max_batch_points: int = 1_000_000
    # A batch's declared point count may not exceed its payload bytes / this.
    min_point_bytes: int = 1
    # Appends waiting for the writer (count and payload bytes); beyond either,
    # producers get RESOURCE_EXHAUSTED.
    max_queue_batches: int = 2048
    max_queue_bytes: int = 64 * MiB
    max_records_per_commit: int = 512
    # Payload bytes of one group commit (a larger batch goes alone): what a client's batch
    # may wait behind when others flood the writer (walbroker.writequeue).
    max_commit_bytes: int = 4 * MiB
    # Off as in Kafka (auto.create.topics.enable=false): topics come from --topic or admin.
    auto_create_topics: bool = False
    max_topics: int = 1000
    max_partitions_per_topic: int = 4096
    # Free space the data directory's file system must keep (statvfs); appends are
    # refused with RESOURCE_EXHAUSTED below it, before the file system fills.
    min_free_bytes: int = 256 * MiB
    # `block` retention: a group with no live member whose last commit is older than
    # this no longer holds records back (0 = every group always counts).
    retention_ignore_idle_group_s: float = 24 * 3600.0
    retry_after_ms: int = 200
    # Longest wait for the writer's answer to one operation before Unavailable.
    writer_timeout_s: float = 30.0

    @property
    def map_size_bytes(self) -> int:
        """LMDB map size: room for the budget plus B-tree overhead and free pages."""
        return max(2 * self.retention_bytes + MAP_HEADROOM_BYTES, MAP_FLOOR_BYTES)


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Everything `walbroker serve` needs."""

    log: LogConfig
    listen: str = "127.0.0.1:7070"
    metrics_listen: str = "127.0.0.1:9101"
    # Connections served at once by the metrics endpoint, and the time each has to send
    # its request and again to take its whole answer (gputel.probes).
    metrics_max_connections: int = 64
    metrics_timeout_s: float = 10.0
    # The address clients should use to reach this broker (metadata); defaults to `listen`.
    advertised_address: str = ""
    node_id: int = 0
    session_timeout_ms: int = 10_000
    max_unacked_points: int = 200_000
    grpc_max_message_bytes: int = 32 * MiB
    # Answers (assignments, commit acks) queued for one Consume stream whose client does
    # not read them; beyond it the stream ends with RESOURCE_EXHAUSTED.
    max_consume_queue_bytes: int = MiB
    # Topics created at start when missing: (name, partitions).
    topics: tuple[tuple[str, int], ...] = ()
    # Open Publish/Consume streams, in total and per client address; newcomers beyond
    # either get RESOURCE_EXHAUSTED. Unary calls (health, admin, metadata) keep
    # `reserved_workers` threads of their own, so streams can never starve them.
    max_streams: int = 2000
    max_streams_per_peer: int = 1000
    reserved_workers: int = 32
    # TCP connections, whatever they carry (walbroker/connections.py): at most this many
    # open at once (gRPC closes newer ones at once); one with no call open for
    # `connection_idle_timeout_s`, or without its TLS/HTTP/2 handshake after
    # `handshake_timeout_s`, is closed.
    max_connections: int = 4096
    connection_idle_timeout_s: float = 120.0
    handshake_timeout_s: float = 10.0
    # Payload bytes per second one client (credential, else address) may publish; beyond
    # it its streams are read no faster (throttled, as Kafka's quotas). 0 = unlimited.
    client_publish_bytes_per_s: int = 0
    # Known groups (live, or with committed offsets or progress); a join creating one more
    # gets RESOURCE_EXHAUSTED. Each consumer group exports 3 lag series per partition.
    max_groups: int = 1000
    # An empty group (no live member) is forgotten, offsets and all, after this (Kafka's
    # offsets.retention.minutes, 7 days).
    group_retention_s: float = 7 * 24 * 3600.0
    # SIGTERM: the process exits within this, whatever clients are doing.
    shutdown_timeout_s: float = 10.0
    # Authentication and TLS (off by default: then only loopback listening is allowed).
    security: SecurityConfig = field(default_factory=SecurityConfig)
