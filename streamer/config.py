"""Streamer configuration: one frozen dataclass, built from CLI flags and GPUTEL_STREAMER_* env.

Every flag `--some-flag` can also be set as `GPUTEL_STREAMER_SOME_FLAG`; a flag on the
command line wins. The environment is read when `parse_config` is called, never at import.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gputel.transport.factory import Transport, kafka_properties
from gputel.transport.url import parse_broker
from walbroker import flags
from walbroker.credentials import (
    ClientSecurity,
    add_client_security_args,
    client_security_from_args,
)

ENV_PREFIX = "GPUTEL_STREAMER_"
TIME_MODES = ("processing", "source")


class ConfigError(ValueError):
    """The flags or environment do not make a usable configuration."""


@dataclass(frozen=True, slots=True)
class StreamerConfig:
    """Everything `gputel-streamer` needs.

    `passes` is the number of passes over each partition's rows (None: forever).
    `rate_rows_per_s` paces this process's rows (token bucket); `pass_interval_s`
    starts each partition's next pass at most once per interval; neither: full speed.
    `source_cache_bytes` bounds the parsed rows kept for later passes (a larger file is
    parsed again each pass; 0: always). `time_mode` is "processing" (points stamped when
    sent) or "source" (the CSV's own timestamps: importing a historical export).
    """

    broker: str
    csv: str = "/data/dcgm.csv"
    topic: str = "telemetry"
    group: str = "streamers"
    passes: int | None = 1
    rate_rows_per_s: float | None = None
    pass_interval_s: float | None = None
    batch_size: int = 2000
    linger_ms: int = 20
    max_pending_points: int = 50_000
    source_cache_bytes: int = 64 * 1024 * 1024
    # Scrape mode (any of these set): live dcgm-exporter targets instead of the CSV.
    scrape: tuple[str, ...] = ()
    targets_file: str = ""
    targets_dns: tuple[str, ...] = ()
    scrape_interval_s: float = 10.0
    scrape_timeout_s: float = 5.0
    scrape_concurrency: int = 64
    scrape_max_series: int = 50_000  # distinct GPUs and metric names remembered (scrape mode)
    # Finished scrapes wait this long to go out together (one batch per partition): a
    # thousand targets a second make tens of broker records, not a thousand.
    scrape_linger_ms: int = 200
    time_mode: str = "processing"
    metrics_listen: str = "127.0.0.1:9102"
    # Connections to /metrics served at once; an idle or slow one gives way (gputel.probes).
    metrics_max_connections: int = 64
    commit_interval_s: float = 1.0
    session_timeout_ms: int = 10_000
    shutdown_timeout_s: float = 20.0
    log_level: str = "INFO"

    @property
    def scraping(self) -> bool:
        """True in scrape mode (targets given), False when streaming the CSV."""
        return bool(self.scrape or self.targets_file or self.targets_dns)

    # Token file and TLS files for the broker (walbroker.credentials).
    security: ClientSecurity = field(default_factory=ClientSecurity)
    # librdkafka properties file for `--broker kafka://…` (gputel.transport.kafka_config)
    kafka_config: str = ""

    def transport(self) -> Transport:
        """The broker to publish to and how to reach it (reads --kafka-config now)."""
        url = parse_broker(self.broker)
        return Transport(url, self.security, kafka_properties(self.kafka_config))


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    def e(name: str, default: str | None = None) -> str | None:
        return env.get(ENV_PREFIX + name, default)

    p = argparse.ArgumentParser(
        prog="gputel-streamer",
        description="Stream a DCGM CSV into walbroker or Kafka, sharing the GPUs with other "
        "streamers (walbroker) or fencing a second one (Kafka).",
    )
    p.add_argument(
        "--broker",
        default=e("BROKER"),
        help="walbroker HOST:PORT (or walbroker://HOST:PORT), or kafka://HOST:PORT[,HOST:PORT…]"
        " (required)",
    )
    p.add_argument(
        "--kafka-config",
        default=e("KAFKA_CONFIG", ""),
        help="librdkafka properties file (security, SASL, TLS) for a kafka:// broker",
    )
    p.add_argument("--csv", default=e("CSV", "/data/dcgm.csv"), help="DCGM exporter CSV file")
    p.add_argument("--topic", default=e("TOPIC", "telemetry"), help="topic to publish to")
    p.add_argument(
        "--group",
        default=e("GROUP", "streamers"),
        help="producer group (walbroker); the job's transactional id on Kafka",
    )
    loop = p.add_mutually_exclusive_group()
    loop.add_argument("--passes", type=int, default=None, help="passes over the file (default 1)")
    loop.add_argument("--forever", action="store_true", default=None, help="loop until stopped")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=None, help="rows per second, this process")
    pace.add_argument(
        "--pass-interval", type=float, default=None, help="seconds between pass starts"
    )
    p.add_argument(
        "--batch-size", type=int, default=e("BATCH_SIZE", "2000"),
        help="points per published batch (on a file's first read a partition's first batches "
        "are 1/8 of it, doubling)",
    )  # fmt: skip
    p.add_argument(
        "--linger-ms",
        type=int,
        default=e("LINGER_MS", "20"),
        help="producer linger; rows go out in whole chunks of --batch-size, so none lingers",
    )
    p.add_argument(
        "--max-pending-points",
        type=int,
        default=e("MAX_PENDING_POINTS", "50000"),
        help="points published but not yet acknowledged before the streamer waits: its "
        "memory for them (200,000 of a real-format import's took 30-50 MiB)",
    )
    p.add_argument(
        "--source-cache-mb",
        type=float,
        default=e("SOURCE_CACHE_MB", "64"),
        help="memory for parsed rows reused by later passes, 24 bytes a row; a larger "
        "file is read again each pass (0: always read)",
    )
    scrape = p.add_argument_group("scrape mode (live dcgm-exporter targets instead of --csv)")
    scrape.add_argument(
        "--scrape", action="append", default=None, metavar="URL",
        help="a target's metrics URL (repeatable)",
    )  # fmt: skip
    scrape.add_argument(
        "--targets-file", default=e("TARGETS_FILE", ""),
        help="Prometheus file_sd file (JSON or YAML), re-read when it changes",
    )  # fmt: skip
    scrape.add_argument(
        "--targets-dns", action="append", default=None, metavar="NAME:PORT",
        help="scrape every address of NAME (e.g. a headless Service), re-resolved each interval",
    )  # fmt: skip
    scrape.add_argument("--scrape-interval-s", type=float, default=e("SCRAPE_INTERVAL_S", "10"))
    scrape.add_argument(
        "--scrape-timeout-s", type=float, default=e("SCRAPE_TIMEOUT_S"),
        help="a scrape slower than this fails (reason timeout); at most the interval "
        "(default: 5, or the interval if shorter)",
    )  # fmt: skip
    scrape.add_argument(
        "--scrape-linger-ms",
        type=int,
        default=e("SCRAPE_LINGER_MS", "200"),
        help="finished scrapes wait at most this long to be published together",
    )
    scrape.add_argument(
        "--scrape-concurrency", type=int, default=e("SCRAPE_CONCURRENCY", "64"),
        help="scrapes in flight at once; a slow target holds one slot, never the others",
    )  # fmt: skip
    scrape.add_argument(
        "--scrape-max-series", type=int, default=e("SCRAPE_MAX_SERIES", "50000"),
        help="distinct GPUs, and metric names, remembered across scrapes; past it both start "
        "afresh (pods that come and go, or an exporter inventing names, never grow memory)",
    )  # fmt: skip
    p.add_argument(
        "--time",
        choices=TIME_MODES,
        default=e("TIME", "processing"),
        help="point timestamps: processing (when sent) or source (the CSV's own, to "
        "import a historical export); one timestamp per source row group either way",
    )
    p.add_argument(
        "--metrics-listen",
        default=e("METRICS_LISTEN", "127.0.0.1:9102"),
        help="HOST:PORT of /metrics, /healthz and /readyz ('' to disable)",
    )
    p.add_argument(
        "--metrics-max-connections",
        type=flags.positive_int,
        default=e("METRICS_MAX_CONNECTIONS", "64"),
        help="connections to --metrics-listen served at once (an idle or slow one gives way)",
    )
    p.add_argument(
        "--commit-interval",
        type=float,
        default=e("COMMIT_INTERVAL", "1.0"),
        help="seconds between heartbeats that report source progress",
    )
    p.add_argument(
        "--session-timeout-ms",
        type=int,
        default=e("SESSION_TIMEOUT_MS", "10000"),
        help="the group gives this streamer's GPUs away after this long without a heartbeat",
    )
    p.add_argument("--log-level", default=e("LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING")
    add_client_security_args(p, env)
    # The loop and pace variables are resolved in _loop_and_pace: a flag of the other kind wins.
    return flags.finish(p, env, ENV_PREFIX, own=("passes", "forever", "rate", "pass_interval"))


def _number(env: Mapping[str, str], name: str, kind: type[int] | type[float]) -> float | None:
    """Return the number in env var GPUTEL_STREAMER_<name>, None if unset; ConfigError if bad."""
    raw = env.get(ENV_PREFIX + name, "").strip()
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name}={raw!r} is not a number") from None


def _loop_and_pace(a: argparse.Namespace, env: Mapping[str, str]) -> dict[str, object]:
    """Resolve passes/forever and rate/pass-interval: flags first, then the environment."""
    forever = a.forever or (
        a.passes is None and env.get(ENV_PREFIX + "FOREVER", "").lower() in ("1", "true", "yes")
    )
    passes = a.passes if a.passes is not None else _number(env, "PASSES", int)
    rate, interval = a.rate, a.pass_interval
    if rate is None and interval is None:
        rate = _number(env, "RATE", float)
        interval = None if rate is not None else _number(env, "PASS_INTERVAL", float)
    return {
        "passes": None if forever else int(passes if passes is not None else 1),
        "rate_rows_per_s": rate,
        "pass_interval_s": interval,
    }


def parse_config(
    argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
) -> StreamerConfig:
    """Return the configuration of the flags in `argv` and the `env` (default: os.environ).

    Raise `ConfigError` for a missing broker or an out-of-range value; argparse itself
    exits with status 2 on an unknown flag.
    """
    env = os.environ if env is None else env
    a = _parser(env).parse_args(argv)
    loop_pace = _loop_and_pace(a, env)
    if not a.broker:
        raise ConfigError(f"--broker HOST:PORT is required (or {ENV_PREFIX}BROKER)")
    try:
        url = parse_broker(a.broker)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if a.kafka_config and not url.is_kafka:
        raise ConfigError("--kafka-config is for a kafka:// broker")
    try:
        kafka_properties(a.kafka_config)  # a bad file fails at start, in one line
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        security = client_security_from_args(a, env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    config = StreamerConfig(
        broker=str(url),  # walbroker://HOST:PORT becomes HOST:PORT, the gRPC target
        kafka_config=a.kafka_config,
        csv=a.csv,
        topic=a.topic,
        group=a.group,
        batch_size=a.batch_size,
        linger_ms=a.linger_ms,
        max_pending_points=a.max_pending_points,
        source_cache_bytes=int(float(a.source_cache_mb) * 1024 * 1024),
        time_mode=a.time,
        scrape=tuple(a.scrape or _split(env.get(ENV_PREFIX + "SCRAPE", ""))),
        targets_file=a.targets_file,
        targets_dns=tuple(a.targets_dns or _split(env.get(ENV_PREFIX + "TARGETS_DNS", ""))),
        scrape_interval_s=float(a.scrape_interval_s),
        scrape_timeout_s=(
            float(a.scrape_timeout_s)
            if a.scrape_timeout_s is not None
            else min(5.0, float(a.scrape_interval_s))
        ),
        scrape_concurrency=int(a.scrape_concurrency),
        scrape_max_series=int(a.scrape_max_series),
        scrape_linger_ms=int(a.scrape_linger_ms),
        metrics_listen=a.metrics_listen,
        metrics_max_connections=int(a.metrics_max_connections),
        commit_interval_s=a.commit_interval,
        session_timeout_ms=a.session_timeout_ms,
        log_level=a.log_level,
        security=security,
        **loop_pace,  # type: ignore[arg-type]
    )
    validate(config)
    return config


def _split(value: str) -> list[str]:
    """A comma-separated env value as a list (empty items dropped)."""
    return [v.strip() for v in value.split(",") if v.strip()]


def validate(c: StreamerConfig) -> None:
    """Raise `ConfigError` naming the first out-of-range setting."""
    checks = [
        (c.passes is None or c.passes >= 1, "--passes must be at least 1"),
        (c.rate_rows_per_s is None or c.rate_rows_per_s > 0, "--rate must be positive"),
        (c.pass_interval_s is None or c.pass_interval_s > 0, "--pass-interval must be positive"),
        (c.batch_size >= 1, "--batch-size must be at least 1"),
        (c.linger_ms >= 0, "--linger-ms must not be negative"),
        (c.max_pending_points >= c.batch_size, "--max-pending-points must be >= --batch-size"),
        (c.source_cache_bytes >= 0, "--source-cache-mb must not be negative"),
        (c.time_mode in TIME_MODES, f"--time must be one of {', '.join(TIME_MODES)}"),
        (c.scrape_interval_s > 0, "--scrape-interval-s must be positive"),
        (
            0 < c.scrape_timeout_s <= c.scrape_interval_s,
            "--scrape-timeout-s must be positive and at most --scrape-interval-s",
        ),
        (c.scrape_concurrency >= 1, "--scrape-concurrency must be at least 1"),
        (c.scrape_max_series >= 1, "--scrape-max-series must be at least 1"),
        (c.scrape_linger_ms >= 0, "--scrape-linger-ms must not be negative"),
        (c.commit_interval_s > 0, "--commit-interval must be positive"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
