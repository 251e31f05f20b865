"""`walbroker` command line: `serve` runs a broker; `admin` inspects topics and groups and resets
offsets; `token` makes bearer tokens."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from walbroker import admin_cli, flags, logs, malloc, token_cli
from walbroker.admin_cli import add_admin_args
from walbroker.config import BrokerConfig, LogConfig
from walbroker.disk import StartupError
from walbroker.errors import BrokerError
from walbroker.security import add_security_args, security_from_args
from walbroker.types import validate_name

log = logging.getLogger(__name__)

EXIT_SHUTDOWN_TIMEOUT = 3


def _env(name: str, default: str) -> str:
    return os.environ.get(f"GPUTEL_BROKER_{name}", default)


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """Flags of `walbroker serve` (each also read from GPUTEL_BROKER_<NAME>)."""
    p.add_argument(
        "--data-dir",
        default=_env("DATA_DIR", ""),
        required=not _env("DATA_DIR", ""),
        help="folder of the LMDB log (created if missing)",
    )
    p.add_argument(
        "--listen",
        type=flags.listen_address,
        default=_env("LISTEN", "127.0.0.1:7070"),
        help="HOST:PORT of the gRPC service",
    )
    p.add_argument(
        "--metrics-listen",
        type=flags.optional_listen_address,
        default=_env("METRICS_LISTEN", "127.0.0.1:9101"),
        help="HOST:PORT of the Prometheus /metrics endpoint ('' to disable)",
    )
    p.add_argument(
        "--advertised-address",
        type=flags.optional_listen_address,
        default=_env("ADVERTISED_ADDRESS", ""),
        help="HOST:PORT clients are told to use for this broker (none: --listen)",
    )
    p.add_argument(
        "--partitions",
        type=flags.positive_int,
        default=int(_env("PARTITIONS", "16")),
        help="partitions of a --topic given without a count (and of auto-created topics)",
    )
    p.add_argument(
        "--fsync",
        choices=["always", "interval"],
        default=_env("FSYNC", "always"),
        help="always: fsync before each acknowledgement; interval: every --fsync-interval-ms",
    )
    p.add_argument(
        "--fsync-interval-ms",
        type=int,
        default=int(_env("FSYNC_INTERVAL_MS", "50")),
        help="sync period under --fsync interval",
    )
    p.add_argument(
        "--retention-bytes",
        type=int,
        default=int(_env("RETENTION_BYTES", str(8 * 1024**3))),
        help="disk budget for stored records",
    )
    p.add_argument(
        "--retention-age-s",
        type=float,
        default=float(_env("RETENTION_AGE_S", "0")),
        help="delete records older than this (0 = no age limit)",
    )
    p.add_argument(
        "--retention-policy",
        choices=["block", "drop-oldest"],
        default=_env("RETENTION_POLICY", "block"),
        help="when the budget is full: refuse producers (block) or delete the oldest",
    )
    p.add_argument(
        "--session-timeout-ms",
        type=int,
        default=int(_env("SESSION_TIMEOUT_MS", "10000")),
        help="a group member silent this long is removed and its partitions move",
    )
    p.add_argument(
        "--max-unacked-points",
        type=int,
        default=int(_env("MAX_UNACKED_POINTS", "200000")),
        help="points one consumer may hold delivered but uncommitted; delivery pauses there "
        "until it commits",
    )
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING")
    _add_topic_args(p)
    _add_limit_args(p)
    add_security_args(p)


def topic_spec(text: str) -> tuple[str, int]:
    """NAME or NAME:PARTITIONS (0 partitions = the --partitions default)."""
    name, _, count = text.partition(":")
    try:
        validate_name("topic", name)
        partitions = int(count) if count else 0
    except (BrokerError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"bad topic {text!r}: {exc}") from None
    if partitions < 0:
        raise argparse.ArgumentTypeError(f"bad topic {text!r}: negative partition count")
    return name, partitions


def _add_topic_args(p: argparse.ArgumentParser) -> None:
    env_topics = [topic_spec(t) for t in _env("TOPICS", "").replace(",", " ").split()]
    p.add_argument(
        "--topic",
        dest="topics",
        type=topic_spec,
        action="append",
        default=env_topics,
        metavar="NAME[:PARTITIONS]",
        help="create this topic at start if missing (repeatable; env GPUTEL_BROKER_TOPICS, "
        "comma-separated)",
    )
    p.add_argument(
        "--auto-create-topics",
        action="store_true",
        default=_env("AUTO_CREATE_TOPICS", "") in ("1", "true"),
        help="create unknown topics on first use (off: publishing to one is NOT_FOUND)",
    )
    p.add_argument(
        "--max-topics",
        type=int,
        default=int(_env("MAX_TOPICS", "1000")),
        help="topics the broker holds; creating one more is refused (RESOURCE_EXHAUSTED)",
    )


def _add_limit_args(p: argparse.ArgumentParser) -> None:
    """The bounds of docs/limits.md."""
    for flag, default, text in (
        ("max-streams", 2000, "open Publish/Consume streams in total"),
        ("max-streams-per-peer", 1000, "open streams from one client address"),
        ("max-connections", 4096, "open TCP connections to --listen, streams or not"),
        (
            "metrics-max-connections",
            64,
            "connections to --metrics-listen served at once (an idle or slow one gives way)",
        ),
        ("hot-buffer-bytes", 64 * 1024**2, "memory for recent records, over all partitions"),
        ("max-queue-bytes", 64 * 1024**2, "payload bytes waiting for the log writer"),
        (
            "max-commit-bytes",
            4 * 1024**2,
            "payload bytes of one group commit: what a client's batch may wait behind",
        ),
        ("min-point-bytes", 1, "bytes a batch must carry per declared point"),
        ("min-free-bytes", 256 * 1024**2, "free space kept on the data volume"),
        ("client-publish-bytes-per-s", 0, "publish rate of one client, throttled (0: no limit)"),
        (
            "max-groups",
            1000,
            "known groups (live, or with stored offsets); a join creating one more is refused",
        ),
        (
            "max-consume-queue-bytes",
            1024**2,
            "answers (assignments, commit acks) queued for a Consume stream whose client does "
            "not read them; past it the stream ends",
        ),
    ):
        name = flag.upper().replace("-", "_")
        p.add_argument(f"--{flag}", type=int, default=int(_env(name, str(default))), help=text)
    for flag, fdefault, text in (
        ("group-retention-s", 7 * 86400.0, "forget a group empty for this long"),
        ("retention-ignore-idle-group-s", 86400.0, "block retention ignores groups idle longer"),
        ("shutdown-timeout-s", 10.0, "SIGTERM: exit within this"),
        ("connection-idle-timeout-s", 120.0, "close a connection with no call open this long"),
        ("handshake-timeout-s", 10.0, "close a connection without its TLS/HTTP/2 handshake"),
        (
            "metrics-timeout-s",
            10.0,
            "a /metrics client's time to send its request, and again to read its whole answer",
        ),
    ):
        name = flag.upper().replace("-", "_")
        p.add_argument(f"--{flag}", type=float, default=float(_env(name, str(fdefault))), help=text)


def config_from_args(a: argparse.Namespace) -> BrokerConfig:
    """The broker's configuration from parsed flags."""
    log_config = LogConfig(
        data_dir=Path(a.data_dir),
        default_partitions=a.partitions,
        fsync=a.fsync,
        fsync_interval_ms=a.fsync_interval_ms,
        retention_bytes=a.retention_bytes,
        retention_age_s=a.retention_age_s,
        retention_policy=a.retention_policy,
        auto_create_topics=a.auto_create_topics,
        max_topics=a.max_topics,
        hot_buffer_bytes=a.hot_buffer_bytes,
        max_queue_bytes=a.max_queue_bytes,
        max_commit_bytes=a.max_commit_bytes,
        min_point_bytes=a.min_point_bytes,
        min_free_bytes=a.min_free_bytes,
        retention_ignore_idle_group_s=a.retention_ignore_idle_group_s,
    )
    # A later --topic of the same name wins; NAME alone takes the --partitions default.
    topics = {name: n or a.partitions for name, n in a.topics}
    return BrokerConfig(
        log=log_config,
        listen=a.listen,
        metrics_listen=a.metrics_listen,
        metrics_max_connections=a.metrics_max_connections,
        metrics_timeout_s=a.metrics_timeout_s,
        advertised_address=a.advertised_address,
        session_timeout_ms=a.session_timeout_ms,
        max_unacked_points=a.max_unacked_points,
        topics=tuple(topics.items()),
        max_streams=a.max_streams,
        max_streams_per_peer=a.max_streams_per_peer,
        max_connections=a.max_connections,
        connection_idle_timeout_s=a.connection_idle_timeout_s,
        handshake_timeout_s=a.handshake_timeout_s,
        client_publish_bytes_per_s=a.client_publish_bytes_per_s,
        max_consume_queue_bytes=a.max_consume_queue_bytes,
        max_groups=a.max_groups,
        group_retention_s=a.group_retention_s,
        shutdown_timeout_s=a.shutdown_timeout_s,
        security=security_from_args(a),
    )


def serve(a: argparse.Namespace) -> int:
    """Run a broker until SIGTERM or SIGINT (exit 0), or until a background loop fails (exit 1)."""
    from walbroker.server import Broker

    logs.setup("walbroker", a.log_level)
    malloc.fix_mmap_threshold()  # freed publish buffers go back to the OS
    config = config_from_args(a)
    try:  # a bad token or TLS file, or an exposed port without them: refuse to start
        broker = Broker(config)
        broker.start()
    except (OSError, ValueError, StartupError, BrokerError) as exc:
        print(f"walbroker: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    signal.signal(signal.SIGHUP, lambda *_: broker.guard.reload())
    while not done.wait(0.5) and not broker.fatal.is_set():
        pass
    watchdog = threading.Timer(config.shutdown_timeout_s, _shutdown_timed_out, [config])
    watchdog.daemon = True
    watchdog.start()
    broker.stop(grace_s=min(5.0, config.shutdown_timeout_s / 3))
    return 1 if broker.fatal.is_set() else 0


def _shutdown_timed_out(config: BrokerConfig) -> None:
    """The shutdown bound passed: leave now (LMDB needs no clean close to stay consistent)."""
    log.error("shutdown timed out; exiting", extra={"timeout_s": config.shutdown_timeout_s})
    logging.shutdown()
    os._exit(EXIT_SHUTDOWN_TIMEOUT)


SERVE_DESCRIPTION = """Run a broker: topics of partitions in an LMDB write-ahead log, acknowledged
only once stored (fsync per commit by default); consumer and producer groups with committed
offsets; gRPC on --listen, Prometheus /metrics on --metrics-listen. Stops on SIGTERM or
Ctrl-C after finishing the commit in progress."""


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The `walbroker` parser, its flags' defaults taken from `env` where set."""
    parser = argparse.ArgumentParser(prog="walbroker", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_parser = sub.add_parser("serve", help="run a broker", description=SERVE_DESCRIPTION)
    add_serve_args(serve_parser)
    admin = sub.add_parser(
        "admin",
        help="inspect topics and groups, reset offsets",
        description=admin_cli.__doc__.splitlines()[0] if admin_cli.__doc__ else None,
    )
    add_admin_args(admin)
    flags.finish(admin, env, "GPUTEL_ADMIN_", {"broker": admin_cli.ENV_BROKER})
    token = sub.add_parser("token", help="make bearer tokens", description="Make bearer tokens.")
    token_cli.add_token_args(token)
    flags.finish(token, env, "GPUTEL_TOKEN_")
    return flags.finish(parser, env, "GPUTEL_BROKER_")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `walbroker` console script."""
    a = build_parser(os.environ).parse_args(argv)
    if a.command == "serve":
        return serve(a)
    if a.command == "token":
        return token_cli.run(a)
    if a.command == "admin":
        try:
            return admin_cli.run(a)
        except BrokenPipeError:  # output piped into `head` and the like
            sys.stderr.close()
            return 0
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
