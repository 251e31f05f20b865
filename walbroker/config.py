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
    hot_bytes_per_partition: int = 4 * MiB
    max_batch_bytes: int = 4 * MiB
    max_batch_points: int = 1_000_000
    # Appends waiting for the writer; beyond this producers get RESOURCE_EXHAUSTED.
    max_queue_batches: int = 2048
    max_records_per_commit: int = 512
    auto_create_topics: bool = True
    retry_after_ms: int = 200

    @property
    def map_size_bytes(self) -> int:
        """LMDB map size: room for the budget plus B-tree overhead and free pages."""
        return max(2 * self.retention_bytes + 64 * MiB, 256 * MiB)


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Everything `walbroker serve` needs."""

    log: LogConfig
    listen: str = "127.0.0.1:7070"
    metrics_listen: str = "127.0.0.1:9101"
    # The address clients should use to reach this broker (metadata); defaults to `listen`.
    advertised_address: str = ""
    node_id: int = 0
    session_timeout_ms: int = 10_000
    max_unacked_points: int = 200_000
    grpc_workers: int = 64
    grpc_max_message_bytes: int = 32 * MiB
    # Authentication and TLS (off by default: then only loopback listening is allowed).
    security: SecurityConfig = field(default_factory=SecurityConfig)
