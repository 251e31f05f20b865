"""`walbroker` command line: `serve` runs a broker; `admin` inspects and resets groups."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from walbroker import admin_cli, flags, logs, token_cli
from walbroker.admin_cli import add_admin_args
from walbroker.config import BrokerConfig, LogConfig
from walbroker.security import add_security_args, security_from_args


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
        "--listen", default=_env("LISTEN", "127.0.0.1:7070"), help="HOST:PORT of the gRPC service"
    )
    p.add_argument(
        "--metrics-listen",
        default=_env("METRICS_LISTEN", "127.0.0.1:9101"),
        help="HOST:PORT of the Prometheus /metrics endpoint ('' to disable)",
    )
    p.add_argument(
        "--advertised-address",
        default=_env("ADVERTISED_ADDRESS", ""),
        help="HOST:PORT clients are told to use for this broker (none: --listen)",
    )
    p.add_argument(
        "--partitions",
        type=int,
        default=int(_env("PARTITIONS", "16")),
        help="partitions of a topic created on first use",
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
        help="credit: points a consumer may hold uncommitted",
    )
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING")
    add_security_args(p)


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
    )
    return BrokerConfig(
        log=log_config,
        listen=a.listen,
        metrics_listen=a.metrics_listen,
        advertised_address=a.advertised_address,
        session_timeout_ms=a.session_timeout_ms,
        max_unacked_points=a.max_unacked_points,
        security=security_from_args(a),
    )


def serve(a: argparse.Namespace) -> int:
    """Run a broker until SIGTERM or SIGINT."""
    from walbroker.server import Broker

    logs.setup("walbroker", a.log_level)
    try:  # a bad token or TLS file, or an exposed port without them: refuse to start
        broker = Broker(config_from_args(a))
        broker.start()
    except (OSError, ValueError) as exc:
        print(f"walbroker: {exc}", file=sys.stderr)
        return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    signal.signal(signal.SIGHUP, lambda *_: broker.guard.reload())
    done.wait()
    broker.stop()
    return 0


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
