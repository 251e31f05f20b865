"""`walbroker admin …`: a thin client of the broker's Admin service; tables or `--json`.

Exit codes: 0 ok, 1 other broker error, 2 usage error (bad flags or a request the
broker calls INVALID_ARGUMENT), 3 unknown topic or group, 4 broker unreachable,
5 refused (UNAUTHENTICATED or PERMISSION_DENIED: check --token-file; FAILED_PRECONDITION: e.g.
deleting a topic or group with live members).
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from google.protobuf.message import Message

from proto.gen import walbroker_admin_pb2 as apb
from proto.gen import walbroker_admin_pb2_grpc as apb_grpc
from walbroker.client import channel, error_from_rpc
from walbroker.credentials import add_client_security_args, client_security_from_args
from walbroker.errors import BrokerError, Code, Unavailable
from walbroker.flags import TRUE_WORDS

DEFAULT_BROKER = "127.0.0.1:7070"
DEFAULT_TIMEOUT_S = 5.0
ENV_BROKER, ENV_JSON, ENV_TIMEOUT = (
    "GPUTEL_BROKER_ADDRESS",
    "GPUTEL_ADMIN_JSON",
    "GPUTEL_ADMIN_TIMEOUT_S",
)
EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNREACHABLE, EXIT_REFUSED = 1, 2, 3, 4, 5
_EXIT_BY_CODE = {
    Code.UNAUTHENTICATED: EXIT_REFUSED,
    Code.PERMISSION_DENIED: EXIT_REFUSED,
    Code.INVALID_ARGUMENT: EXIT_USAGE,
    Code.FAILED_PRECONDITION: EXIT_REFUSED,
    Code.NOT_FOUND: EXIT_NOT_FOUND,
    Code.UNAVAILABLE: EXIT_UNREACHABLE,
    Code.DEADLINE_EXCEEDED: EXIT_UNREACHABLE,
    Code.CANCELLED: EXIT_UNREACHABLE,
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# ---- arguments --------------------------------------------------------------------------------


def iso_datetime_ns(text: str) -> int:
    """ISO 8601 date-time as ns since the epoch; without an offset it is UTC."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date-time: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000


def offset(text: str) -> int:
    """A non-negative offset."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"an offset is >= 0, got {value}")
    return value


ExtraFlags = Callable[[argparse.ArgumentParser], None]


def _common(
    p: argparse.ArgumentParser, extra: ExtraFlags | None = None, broker: str = "HOST:PORT"
) -> None:
    # SUPPRESS: the flags may come before or after the command without overriding each other.
    p.add_argument(
        "--broker",
        default=argparse.SUPPRESS,
        help=f"{broker} of the broker (default: {DEFAULT_BROKER}; env {ENV_BROKER})",
    )
    p.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"machine-readable output, exact numbers (default: off; env {ENV_JSON})",
    )
    p.add_argument(
        "--timeout-s",
        type=float,
        default=argparse.SUPPRESS,
        help=f"per-call deadline (default: {DEFAULT_TIMEOUT_S:g}; env {ENV_TIMEOUT})",
    )
    add_client_security_args(p, suppress=True)
    if extra is not None:
        extra(p)


def add_admin_args(
    p: argparse.ArgumentParser, extra: ExtraFlags | None = None, broker: str = "HOST:PORT"
) -> None:
    """The `admin` subcommands and their flags; `extra` adds flags next to the common ones,
    `broker` says which addresses `--broker` takes."""
    _common(p, extra, broker)
    sub = p.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text, description=help_text)
        _common(c, extra, broker)
        return c

    cmd("topics", "every topic: partitions, log start/end offsets, bytes, publish times")
    cmd("describe-topic", "one topic, per partition").add_argument("topic")
    cmd("groups", "every group: state, members, total lag")
    cmd(
        "describe-group", "one group: members, per partition committed offset and lag"
    ).add_argument("group")
    c = cmd("create-topic", "create a topic (nothing changes if it exists)")
    c.add_argument("topic")
    c.add_argument(
        "--partitions", type=int, default=0, help="partition count (default: the broker's)"
    )
    d = cmd("delete-topic", "delete a topic and everything stored under it")
    d.add_argument("topic")
    d.add_argument("--force", action="store_true", help="even while groups on it have live members")
    cmd("delete-group", "forget a group and its committed offsets (no live members)").add_argument(
        "group"
    )
    r = cmd("reset-offsets", "move a group's committed offsets (live members follow)")
    _group_topic(r)
    to = r.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true", help="the log start offset")
    to.add_argument("--to-latest", action="store_true", help="the log end offset (skip all)")
    to.add_argument("--to-offset", type=offset, metavar="N", help="this offset")
    to.add_argument(
        "--to-datetime",
        type=iso_datetime_ns,
        metavar="ISO8601",
        help="first record published at or after this time (UTC if no offset given)",
    )
    to.add_argument("--shift-by", type=int, metavar="±N", help="relative to the committed offset")
    r = cmd("replay", "re-deliver a group's data from an offset or a time (a reset)")
    _group_topic(r)
    frm = r.add_mutually_exclusive_group(required=True)
    frm.add_argument("--from-earliest", action="store_true", help="the log start offset")
    frm.add_argument("--from-offset", type=offset, metavar="N", help="this offset")
    frm.add_argument(
        "--from-datetime",
        type=iso_datetime_ns,
        metavar="ISO8601",
        help="first record published at or after this time (UTC if no offset given)",
    )


def _group_topic(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group", required=True, help="the consumer group")
    p.add_argument("--topic", required=True, help="the topic whose offsets move")
    p.add_argument(
        "--partition",
        dest="partitions",
        type=int,
        action="append",
        default=[],
        metavar="P",
        help="only this partition (repeatable; default: all)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")


# ---- running ----------------------------------------------------------------------------------


def address_of(a: argparse.Namespace) -> str:
    """The broker address: --broker, else its environment variable, else the default."""
    return str(getattr(a, "broker", "") or os.environ.get(ENV_BROKER, DEFAULT_BROKER))


def output_options(a: argparse.Namespace) -> tuple[bool, float]:
    """(--json, --timeout-s); the common flags default to SUPPRESS, so variables are read here."""
    as_json = bool(getattr(a, "json", os.environ.get(ENV_JSON, "").lower() in TRUE_WORDS))
    timeout_s = float(getattr(a, "timeout_s", os.environ.get(ENV_TIMEOUT) or DEFAULT_TIMEOUT_S))
    return as_json, timeout_s


def run(a: argparse.Namespace) -> int:
    """Run one admin command; print its output; return the exit code."""
    address = address_of(a)
    if address.startswith("kafka://"):
        print(
            "walbroker admin: a kafka:// broker is not a walbroker: use gputel-admin",
            file=sys.stderr,
        )
        return EXIT_USAGE
    as_json, timeout_s = output_options(a)
    call = _COMMANDS[a.admin_command][0]
    try:
        security = client_security_from_args(a)
        ch = channel(address, security)
    except ValueError as exc:
        print(f"walbroker admin: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with ch:
        try:
            resp = call(apb_grpc.AdminStub(ch), a, timeout_s)
        except grpc.RpcError as exc:
            error = error_from_rpc(exc, ch)
            if (
                error.code == Code.UNAVAILABLE
                and security.tls_ca is not None
                and security.tls_cert is None
                and "socket closed" in error.message.lower()
            ):  # a mutual-TLS broker closes the handshake of a client without a certificate
                error = Unavailable(
                    f"{error.message} (a broker that requires client certificates closes the "
                    "connection: give --tls-cert and --tls-key)"
                )
            return fail(error, address)
    show(a.admin_command, resp, as_json)
    return 0


def show(command: str, resp: Message, as_json: bool) -> None:
    """Print the response of `command`: its table, or JSON (clamp notes then go to stderr)."""
    print(json.dumps(to_json(resp), indent=2) if as_json else _COMMANDS[command][1](resp))
    if isinstance(resp, apb.ResetOffsetsResponse) and as_json:
        for note in _clamp_notes(resp):
            print(note, file=sys.stderr)


def fail(exc: BrokerError, address: str, prog: str = "walbroker admin") -> int:
    """Print `exc` as one line on stderr; return its exit code."""
    code = _EXIT_BY_CODE.get(exc.code, EXIT_ERROR)
    detail = exc.message.splitlines()[0] if exc.message else exc.code.name
    if code == EXIT_UNREACHABLE:
        print(f"{prog}: broker {address} unreachable: {detail}", file=sys.stderr)
    else:
        print(f"{prog}: {detail}", file=sys.stderr)
    return code


Call = Callable[[Any, argparse.Namespace, float], Message]


def _topics(s: Any, a: argparse.Namespace, t: float) -> Message:
    return s.ListTopics(apb.ListTopicsRequest(), timeout=t)  # type: ignore[no-any-return]


def _describe_topic(s: Any, a: argparse.Namespace, t: float) -> Message:
    return s.DescribeTopic(apb.DescribeTopicRequest(topic=a.topic), timeout=t)  # type: ignore[no-any-return]


def _groups(s: Any, a: argparse.Namespace, t: float) -> Message:
    return s.ListGroups(apb.ListGroupsRequest(), timeout=t)  # type: ignore[no-any-return]


def _describe_group(s: Any, a: argparse.Namespace, t: float) -> Message:
    return s.DescribeGroup(apb.DescribeGroupRequest(group=a.group), timeout=t)  # type: ignore[no-any-return]


def _reset(s: Any, a: argparse.Namespace, t: float) -> Message:
    req = apb.ResetOffsetsRequest(
        group=a.group, topic=a.topic, partitions=a.partitions, dry_run=a.dry_run
    )
    if getattr(a, "to_earliest", False) or getattr(a, "from_earliest", False):
        req.to_earliest = True
    elif getattr(a, "to_latest", False):
        req.to_latest = True
    elif (n := _first(a, "to_offset", "from_offset")) is not None:
        req.to_offset = n
    elif (ns := _first(a, "to_datetime", "from_datetime")) is not None:
        req.to_time_ns = ns
    else:
        req.shift_by = a.shift_by
    return s.ResetOffsets(req, timeout=t)  # type: ignore[no-any-return]


def _create_topic(s: Any, a: argparse.Namespace, t: float) -> Message:
    req = apb.CreateTopicRequest(topic=a.topic, partitions=a.partitions)
    return s.CreateTopic(req, timeout=t)  # type: ignore[no-any-return]


def _delete_topic(s: Any, a: argparse.Namespace, t: float) -> Message:
    req = apb.DeleteTopicRequest(topic=a.topic, force=a.force)
    return s.DeleteTopic(req, timeout=t)  # type: ignore[no-any-return]


def _delete_group(s: Any, a: argparse.Namespace, t: float) -> Message:
    return s.DeleteGroup(apb.DeleteGroupRequest(group=a.group), timeout=t)  # type: ignore[no-any-return]


def _first(a: argparse.Namespace, *names: str) -> int | None:
    values = [getattr(a, n, None) for n in names]
    return next((v for v in values if v is not None), None)


# ---- output -----------------------------------------------------------------------------------


def to_json(msg: Message) -> dict[str, Any]:
    """A response as plain JSON values: integers stay integers, unset optional fields are null."""
    out: dict[str, Any] = {}
    for f in msg.DESCRIPTOR.fields:
        value = getattr(msg, f.name)
        if f.is_repeated:
            out[f.name] = [to_json(v) if f.message_type else v for v in value]
        elif f.message_type:
            out[f.name] = to_json(value)
        elif f.has_presence and not msg.HasField(f.name):
            out[f.name] = None
        else:
            out[f.name] = value
    return out


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces."""
    cells = [list(headers), *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)  # fmt: skip


def fmt_time(ns: int) -> str:
    """ns since the epoch as ISO 8601 UTC to the millisecond; '-' for 0."""
    if not ns:
        return "-"
    dt = _EPOCH + timedelta(microseconds=ns // 1000)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def human_bytes(n: int) -> str:
    """A byte count for people: 512 B, 1.5 KiB, 8.0 GiB (exact numbers are in --json)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _render_topics(resp: Any) -> str:
    head = ["TOPIC", "PARTITIONS", "LOG START", "LOG END", "SIZE", "OLDEST", "NEWEST"]
    return table(head, [_topic_row(t) for t in resp.topics])


def _topic_row(t: Any) -> list[object]:
    return [
        t.name,
        t.partitions,
        t.log_start_offset,
        t.log_end_offset,
        human_bytes(t.size_bytes),
        fmt_time(t.first_publish_ns),
        fmt_time(t.last_publish_ns),
    ]


def _render_topic(resp: Any) -> str:
    head = ["PARTITION", "LOG START", "LOG END", "SIZE", "OLDEST", "NEWEST"]
    rows = [
        [
            p.partition,
            p.log_start_offset,
            p.log_end_offset,
            human_bytes(p.size_bytes),
            fmt_time(p.first_publish_ns),
            fmt_time(p.last_publish_ns),
        ]
        for p in resp.partitions
    ]
    summary = _render_topics(apb.ListTopicsResponse(topics=[resp.topic]))
    return f"{summary}\n\n{table(head, rows)}\n\ngroups: {', '.join(resp.groups) or '-'}"


def _render_groups(resp: Any) -> str:
    head = [
        "GROUP",
        "TOPIC",
        "ROLE",
        "STATE",
        "GENERATION",
        "MEMBERS",
        "LAG",
        "LAG SECONDS",
        "NOTE",
    ]
    return table(head, [_group_row(g) for g in resp.groups])


def _group_row(g: Any) -> list[object]:
    return [
        g.name,
        g.topic,
        g.role or "-",
        g.state,
        g.generation,
        g.members,
        g.lag_points,
        f"{g.lag_seconds:.1f}",
        "idle: retention ignores it" if g.ignored_by_retention else "",
    ]


def _render_group(resp: Any) -> str:
    members = table(
        ["MEMBER", "CLIENT", "HOST", "PARTITIONS"],
        [
            [
                m.member_id,
                m.client_id or "-",
                m.host or "-",
                ",".join(map(str, m.partitions)) or "-",
            ]
            for m in resp.members
        ],
    )
    head = ["TOPIC", "PARTITION", "OWNER", "COMMITTED", "LOG END", "LAG", "LAG SECONDS"]
    rows = [
        [
            p.topic,
            p.partition,
            p.owner or "-",
            p.committed_offset if p.HasField("committed_offset") else "-",
            p.log_end_offset,
            p.lag_points,
            f"{p.lag_seconds:.1f}",
        ]
        for p in resp.partitions
    ]
    summary = _render_groups(apb.ListGroupsResponse(groups=[resp.group]))
    return f"{summary}\n\n{members}\n\n{table(head, rows)}"


def _render_reset(resp: Any) -> str:
    head = ["PARTITION", "OLD", "NEW", "LOG START", "LOG END"]
    rows = [
        [
            c.partition,
            c.old_offset if c.HasField("old_offset") else "-",
            c.new_offset,
            c.log_start_offset,
            c.log_end_offset,
        ]
        for c in resp.changes
    ]
    lines = [f"group {resp.group}, topic {resp.topic}:", table(head, rows), *_clamp_notes(resp)]
    if resp.applied:
        lines.append(
            f"applied: {len(rows)} partition(s) reset; the group's members resume from NEW"
        )
    else:
        lines.append("dry run: nothing changed")
    return "\n".join(lines)


def _clamp_notes(resp: Any) -> list[str]:
    return [
        f"note: partition {c.partition}: offset {c.requested_offset} is outside the retained "
        f"range {c.log_start_offset}..{c.log_end_offset}; clamped to {c.new_offset}"
        for c in resp.changes
        if c.clamped
    ]


def _render_created(resp: Any) -> str:
    verb = "created" if resp.created else "exists already (unchanged)"
    return f"topic {resp.topic.name} {verb}: {resp.topic.partitions} partition(s)"


def _render_deleted_topic(resp: Any) -> str:
    return f"topic {resp.topic} deleted: {resp.freed_bytes} bytes freed from the disk budget"


def _render_deleted_group(resp: Any) -> str:
    return f"group {resp.group} deleted: {resp.offsets_deleted} committed offset(s) removed"


_COMMANDS: dict[str, tuple[Call, Callable[[Any], str]]] = {
    "create-topic": (_create_topic, _render_created),
    "delete-topic": (_delete_topic, _render_deleted_topic),
    "delete-group": (_delete_group, _render_deleted_group),
    "topics": (_topics, _render_topics),
    "describe-topic": (_describe_topic, _render_topic),
    "groups": (_groups, _render_groups),
    "describe-group": (_describe_group, _render_group),
    "reset-offsets": (_reset, _render_reset),
    "replay": (_reset, _render_reset),
}
