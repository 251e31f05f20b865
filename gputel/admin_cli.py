"""`gputel-admin`: `walbroker admin` for either transport, walbroker or Kafka (docs/admin.md).

The commands, flags, tables, `--json` and exit codes are `walbroker admin`'s. With
`--broker kafka://HOST:PORT[,…]` they run against a Kafka cluster (gputel.transport.kafka_admin),
with its client properties and credentials from `--kafka-config FILE` (gputel.transport
.kafka_config: secrets referenced as ${env:…} / ${file:…}); any other `--broker` (or
`walbroker://HOST:PORT`) is passed to `walbroker admin` unchanged.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping

from google.protobuf.message import Message

from gputel.transport.kafka_admin import KafkaAdmin, bootstrap_of
from gputel.transport.kafka_config import KafkaConfigError, load_properties
from walbroker import admin_cli, flags
from walbroker.errors import BrokerError
from walbroker.reset import ResetTarget

ENV_KAFKA_CONFIG = "GPUTEL_KAFKA_CONFIG"
PROG = "gputel-admin"
# walbroker's access flags: on Kafka, credentials come from the --kafka-config file instead.
_WALBROKER_ONLY = ("token_file", "tls_ca", "tls_cert", "tls_key")


def _kafka_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--kafka-config",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help=f"librdkafka properties for a kafka:// broker (default: none; env {ENV_KAFKA_CONFIG})",
    )


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The `gputel-admin` parser: walbroker admin's commands plus --kafka-config."""
    p = argparse.ArgumentParser(
        prog=PROG, description=(__doc__ or "").splitlines()[0].split(": ", 1)[-1]
    )
    admin_cli.add_admin_args(
        p, extra=_kafka_flags, broker="HOST:PORT, walbroker://HOST:PORT or kafka://HOST:PORT[,…]"
    )
    return flags.finish(p, env, "GPUTEL_ADMIN_", {"broker": admin_cli.ENV_BROKER})


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `gputel-admin` console script."""
    a = build_parser(os.environ).parse_args(argv)
    try:
        address = admin_cli.address_of(a)
        if not address.startswith("kafka://"):
            a.broker = address.removeprefix("walbroker://")
            return admin_cli.run(a)
        return run_kafka(a, address)
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


def run_kafka(a: argparse.Namespace, address: str) -> int:
    """Run one admin command against the Kafka cluster at `address` (kafka://…)."""
    as_json, timeout_s = admin_cli.output_options(a)
    given = [f"--{n.replace('_', '-')}" for n in _WALBROKER_ONLY if getattr(a, n, None)]
    if given:
        return _usage(f"{', '.join(given)}: not for Kafka; put credentials in --kafka-config")
    path = str(getattr(a, "kafka_config", "") or os.environ.get(ENV_KAFKA_CONFIG, ""))
    try:
        bootstrap = bootstrap_of(address)
        properties = load_properties(path) if path else {}
    except (BrokerError, KafkaConfigError) as exc:
        return _usage(str(exc))
    # librdkafka logs every failed connection attempt; the one-line error below says what failed.
    logging.getLogger("gputel.transport.librdkafka").addHandler(logging.NullHandler())
    admin = KafkaAdmin(bootstrap, properties, timeout_s)
    try:
        resp = _KAFKA[a.admin_command](admin, a)
    except BrokerError as exc:
        return admin_cli.fail(exc, address, PROG)
    admin_cli.show(a.admin_command, resp, as_json)
    return 0


def _usage(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return admin_cli.EXIT_USAGE


def target_of(a: argparse.Namespace) -> ResetTarget:
    """The reset target named by reset-offsets' `--to-…` or replay's `--from-…` flag."""
    if getattr(a, "to_earliest", False) or getattr(a, "from_earliest", False):
        return ResetTarget("earliest")
    if getattr(a, "to_latest", False):
        return ResetTarget("latest")
    for name, kind in (("to_offset", "offset"), ("from_offset", "offset"),
                       ("to_datetime", "time"), ("from_datetime", "time")):  # fmt: skip
        value = getattr(a, name, None)
        if value is not None:
            return ResetTarget(kind, int(value))  # type: ignore[arg-type]
    return ResetTarget("shift", int(a.shift_by))


def _reset(k: KafkaAdmin, a: argparse.Namespace) -> Message:
    resp = k.reset_offsets(a.group, a.topic, a.partitions, target_of(a), a.dry_run)
    if a.dry_run:
        g = k.group_offsets([a.group])[0]
        if g.members:
            print(
                f"note: group {a.group} has {len(g.members)} active member(s); Kafka refuses "
                "to apply this until they are stopped",
                file=sys.stderr,
            )
    return resp


_KAFKA: dict[str, Callable[[KafkaAdmin, argparse.Namespace], Message]] = {
    "topics": lambda k, a: k.topics(),
    "describe-topic": lambda k, a: k.describe_topic(a.topic),
    "groups": lambda k, a: k.groups(),
    "describe-group": lambda k, a: k.describe_group(a.group),
    # No --partitions: the cluster's num.partitions, as walbroker uses its own default.
    "create-topic": lambda k, a: k.create_topic(a.topic, a.partitions or -1),
    "delete-topic": lambda k, a: k.delete_topic(a.topic, a.force),
    "delete-group": lambda k, a: k.delete_group(a.group),
    "reset-offsets": _reset,
    "replay": _reset,
}
