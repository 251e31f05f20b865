"""Collector configuration: one frozen dataclass, built from CLI flags and environment variables.

Every flag has an environment fallback, read only when `from_args` is called:
`GPUTEL_COLLECTOR_<FLAG>` (e.g. `GPUTEL_COLLECTOR_BATCH_SIZE`) and, for the InfluxDB store,
`GPUTEL_INFLUX_URL`, `_ORG`, `_BUCKET` and `_TOKEN`. A flag wins over its variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

from collector.future import DEFAULT_MAX_FUTURE_SKEW_S
from gputel.transport.factory import Transport, kafka_properties
from gputel.transport.url import parse_broker
from store import InvalidArgument, influx_settings
from walbroker import flags
from walbroker.credentials import (
    ClientSecurity,
    add_client_security_args,
    client_security_from_args,
)

PROG = "gputel-collector"
DEFAULT_MAX_BATCH_POINTS = 50_000
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """A flag or environment variable has an unusable value (reported as one line)."""


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    """Everything `gputel-collector` needs; `influx_token` never appears in a repr."""

    broker: str
    store: str
    topic: str = "telemetry"
    group: str = "collectors"
    influx_url: str = ""
    influx_org: str = ""
    influx_bucket: str = ""
    influx_token: str = field(default="", repr=False)
    # 5,000: with the pipelined writer, 20,000-point batches bought no throughput and doubled
    # the end-to-end p99 (docs/benchmarks.md); flush_ms bounds the wait of a partial one.
    batch_size: int = 5_000
    flush_ms: int = 1_000
    # While the writer is busy the loop keeps taking records; when it frees, everything held
    # goes in one write (one transaction, one commit), up to this many points. A loop that
    # holds this many waits for the writer (and stops polling, so the broker stops delivering).
    max_batch_points: int = DEFAULT_MAX_BATCH_POINTS
    metrics_listen: str = "127.0.0.1:9103"
    # Connections to /metrics served at once; an idle or slow one gives way (gputel.probes).
    metrics_max_connections: int = 64
    health_listen: str = ""
    client_id: str = ""
    max_unacked_points: int = 100_000
    session_timeout_ms: int = 10_000
    # Consecutive failed writes after which /readyz answers 503 (and polling has stopped).
    failures_before_unready: int = 3
    retry_initial_ms: int = 200
    retry_max_ms: int = 5_000
    # On SIGTERM, how long to keep retrying the last flush before leaving without it.
    shutdown_timeout_s: float = 20.0
    # SQLite store: "full" = a write is on disk before its offsets are committed (the default),
    # "normal" = it survives a process crash only (store.sqlite)
    sqlite_synchronous: str = "full"
    # The GPU catalog's last_seen lags the newest point by less than this (either store).
    catalog_granularity_s: float = 60.0
    # Points stamped further ahead of this clock are dead-lettered (collector.future).
    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S
    log_level: str = "INFO"
    # Token file and TLS files for the broker (walbroker.credentials).
    security: ClientSecurity = field(default_factory=ClientSecurity)
    # librdkafka properties file for `--broker kafka://…` (gputel.transport.kafka_config)
    kafka_config: str = ""

    def transport(self) -> Transport:
        """The broker to consume from and how to reach it (reads --kafka-config now)."""
        return Transport(
            parse_broker(self.broker), self.security, kafka_properties(self.kafka_config)
        )

    @property
    def dead_letter_topic(self) -> str:
        """The topic that receives records the collector cannot store."""
        return f"{self.topic}.dlq"

    def store_options(self) -> dict[str, str]:
        """Keyword arguments for `store.open_store`."""
        if self.store != "influx":
            return {"sqlite_synchronous": self.sqlite_synchronous}
        return {
            "url": self.influx_url,
            "org": self.influx_org,
            "bucket": self.influx_bucket,
            "token": self.influx_token,
        }


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are a single line (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def env_of(name: str, default: str = "") -> str:
        return env.get(f"GPUTEL_COLLECTOR_{name}", default)

    p = _Parser(
        prog=PROG, description="Store telemetry from walbroker or Kafka in SQLite or InfluxDB."
    )
    p.add_argument(
        "--broker",
        default=env_of("BROKER"),
        help="walbroker HOST:PORT (or walbroker://HOST:PORT), or kafka://HOST:PORT[,HOST:PORT…]"
        " (required)",
    )
    p.add_argument(
        "--kafka-config",
        default=env_of("KAFKA_CONFIG"),
        help="librdkafka properties file (security, SASL, TLS) for a kafka:// broker",
    )
    p.add_argument("--topic", default=env_of("TOPIC", "telemetry"), help="topic to consume")
    p.add_argument("--group", default=env_of("GROUP", "collectors"), help="consumer group")
    p.add_argument("--store", default=env_of("STORE"), help="sqlite:PATH or influx (required)")
    p.add_argument(
        "--sqlite-synchronous",
        choices=("full", "normal"),
        default=env_of("SQLITE_SYNCHRONOUS", "full"),
        help="full: a write is on disk before its offsets are committed (default); normal: "
        "survives a process crash, not an OS crash or power loss",
    )
    p.add_argument("--influx-url", default="", help="InfluxDB URL (with --store influx)")
    p.add_argument("--influx-org", default="", help="InfluxDB organisation")
    p.add_argument("--influx-bucket", default="", help="InfluxDB bucket")
    p.add_argument("--influx-token", default="", help="InfluxDB token; prefer the variable")
    p.add_argument("--batch-size", default=env_of("BATCH_SIZE", "5000"), help="points per write")
    p.add_argument("--flush-ms", default=env_of("FLUSH_MS", "1000"), help="max hold time")
    p.add_argument(
        "--max-batch-points",
        default=env_of("MAX_BATCH_POINTS", ""),
        help="points held for one write while the writer is behind (>= --batch-size; "
        f"default the larger of {DEFAULT_MAX_BATCH_POINTS} and --batch-size)",
    )
    p.add_argument(
        "--metrics-listen",
        default=env_of("METRICS_LISTEN", "127.0.0.1:9103"),
        help="HOST:PORT of /metrics, /healthz and /readyz ('' to disable)",
    )
    p.add_argument(
        "--metrics-max-connections",
        type=flags.positive_int,
        default=env_of("METRICS_MAX_CONNECTIONS", "64"),
        help="connections to --metrics-listen served at once (an idle or slow one gives way)",
    )
    p.add_argument(
        "--health-listen",
        default=env_of("HEALTH_LISTEN", ""),
        help="a separate HOST:PORT for /healthz and /readyz only",
    )
    p.add_argument(
        "--client-id", default=env_of("CLIENT_ID", ""), help="shown as the member's CLIENT"
    )
    p.add_argument(
        "--max-unacked-points",
        default=env_of("MAX_UNACKED_POINTS", "100000"),
        help="credit: points held before the broker stops delivering (>= --batch-size)",
    )
    p.add_argument(
        "--session-timeout-ms",
        default=env_of("SESSION_TIMEOUT_MS", "10000"),
        help="the group moves this member's partitions after this long without a heartbeat",
    )
    p.add_argument(
        "--catalog-granularity-s",
        default=env_of("CATALOG_GRANULARITY_S", "60"),
        help="rewrite a GPU's catalog last_seen when it moved this much (either store)",
    )
    p.add_argument(
        "--max-future-skew-s",
        default=env_of("MAX_FUTURE_SKEW_S", str(int(DEFAULT_MAX_FUTURE_SKEW_S))),
        help="points stamped further ahead of this clock go to the dead-letter topic",
    )
    p.add_argument("--log-level", default=env_of("LOG_LEVEL", "INFO"), help=", ".join(LOG_LEVELS))
    add_client_security_args(p, env)
    return flags.finish(p, env, "GPUTEL_COLLECTOR_")


def _positive(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, not {text!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, not {value}")
    return value


def _max_batch(text: str, batch_size: int) -> int:
    """--max-batch-points: given, at least --batch-size; else the larger of the default and it."""
    if not text:
        return max(DEFAULT_MAX_BATCH_POINTS, batch_size)
    value = _positive("--max-batch-points", text)
    if value < batch_size:
        raise ConfigError(f"--max-batch-points ({value}) is below --batch-size")
    return value


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, not {text!r}") from None
    if not 0 <= value < 10**9:
        raise ConfigError(f"{name} must be in [0, 1e9), not {text}")
    return value


def _address(name: str, text: str, required: bool = False) -> str:
    if not text:
        if required:
            raise ConfigError(f"{name} is required (HOST:PORT)")
        return ""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} must be HOST:PORT, not {text!r}")
    return text


def _broker(text: str, kafka_config: str) -> str:
    """The validated --broker value (any transport the boundary knows)."""
    try:
        url = parse_broker(text)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if kafka_config and not url.is_kafka:
        raise ConfigError("--kafka-config is for a kafka:// broker")
    try:
        kafka_properties(kafka_config)  # a bad file fails at start, in one line (exit 2)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return str(url)  # walbroker://HOST:PORT becomes HOST:PORT, the gRPC target


def from_args(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> CollectorConfig:
    """Build the configuration from flags and env (default: `os.environ`, read now)."""
    env = os.environ if env is None else env
    a = _parser(env).parse_args(argv)
    kind = a.store.partition(":")[0]
    if not a.store:
        raise ConfigError("--store is required: sqlite:PATH or influx")
    if kind not in ("sqlite", "influx") or (kind == "sqlite" and a.store == "sqlite:"):
        raise ConfigError(f"--store must be sqlite:PATH or influx, not {a.store!r}")
    influx = {"url": "", "org": "", "bucket": "", "token": ""}
    if a.store == "influx":
        given = {"url": a.influx_url, "org": a.influx_org, "bucket": a.influx_bucket}
        try:
            influx = influx_settings(env, token=a.influx_token, **given)
        except InvalidArgument as exc:
            raise ConfigError(str(exc)) from None
    batch_size = _positive("--batch-size", a.batch_size)
    max_unacked = _positive("--max-unacked-points", a.max_unacked_points)
    if max_unacked < batch_size:
        # The broker stops delivering at max_unacked points: a bigger batch would never fill.
        raise ConfigError(f"--max-unacked-points ({max_unacked}) is below --batch-size")
    try:
        security = client_security_from_args(a, env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    level = a.log_level.upper()
    if level not in LOG_LEVELS:
        choices = ", ".join(LOG_LEVELS)
        raise ConfigError(f"--log-level must be one of {choices}, not {a.log_level!r}")
    if a.sqlite_synchronous not in ("full", "normal"):  # (argparse checks flags, not the env)
        raise ConfigError(
            f"--sqlite-synchronous must be full or normal, not {a.sqlite_synchronous!r}"
        )
    return CollectorConfig(
        broker=_broker(a.broker, a.kafka_config),
        kafka_config=a.kafka_config,
        store=a.store,
        sqlite_synchronous=a.sqlite_synchronous,
        topic=a.topic,
        group=a.group,
        influx_url=influx["url"],
        influx_org=influx["org"],
        influx_bucket=influx["bucket"],
        influx_token=influx["token"],
        batch_size=batch_size,
        max_batch_points=_max_batch(a.max_batch_points, batch_size),
        flush_ms=_positive("--flush-ms", a.flush_ms),
        metrics_listen=_address("--metrics-listen", a.metrics_listen),
        metrics_max_connections=int(a.metrics_max_connections),
        health_listen=_address("--health-listen", a.health_listen),
        client_id=a.client_id,
        max_unacked_points=max_unacked,
        session_timeout_ms=_positive("--session-timeout-ms", a.session_timeout_ms),
        catalog_granularity_s=_positive("--catalog-granularity-s", a.catalog_granularity_s),
        max_future_skew_s=_seconds("--max-future-skew-s", a.max_future_skew_s),
        log_level=level,
        security=security,
    )
