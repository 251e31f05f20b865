"""Request validation before anything reaches the log's writer: names, identifiers and ranges.

Kafka's rules for names: 1-249 characters of `[A-Za-z0-9._-]`, and neither "."
nor "..". Free-form identifiers (producer id, client id, member id) are UTF-8
(the protobuf parser already refuses invalid UTF-8 in a string field), carry no
NUL (it separates names in LMDB keys) and are bounded in bytes, so no key can
pass LMDB's 511-byte limit: a group key is at most 249 + 1 + 249 + 1 + 4 bytes,
a producer key at most 128 + 1 + 249 + 1 + 4. Every failure is InvalidArgument,
raised before the request is queued, so a bad request only ever fails itself.
"""

from __future__ import annotations

import re

from walbroker.errors import InvalidArgument

MAX_NAME_CHARS = 249
MAX_PRODUCER_ID_BYTES = 128
MAX_CLIENT_ID_BYTES = 256
MAX_MEMBER_ID_BYTES = 256
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")


def validate_name(kind: str, name: str) -> str:
    """Return `name` if it is a valid topic or group name, else raise InvalidArgument."""
    if not _NAME_RE.fullmatch(name) or name in (".", ".."):
        shown = name if len(name) <= 64 else f"{name[:64]}... ({len(name)} chars)"
        raise InvalidArgument(
            f"invalid {kind} name {shown!r}: use 1-{MAX_NAME_CHARS} of [A-Za-z0-9._-], "
            "not '.' or '..'"
        )
    return name


def validate_identifier(kind: str, value: str, max_bytes: int) -> str:
    """Return `value` if it is at most `max_bytes` of UTF-8 without NUL, else InvalidArgument."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise InvalidArgument(f"{kind} of {size} bytes exceeds the limit of {max_bytes}")
    if "\x00" in value:
        raise InvalidArgument(f"{kind} must not contain NUL")
    return value


def validate_batch(payload_bytes: int, count: int, max_points: int, min_point_bytes: int) -> None:
    """Check a batch's declared point count against its size and the limits.

    The broker does not decode payloads, so the declared count is checked against
    what the bytes could hold: every point takes at least `min_point_bytes` (a
    telemetry point carries an 8-byte value and an 8-byte time). A 1-byte payload
    claiming a million points would otherwise move the offsets by a million.
    """
    if count <= 0 or payload_bytes <= 0:
        raise InvalidArgument("empty batch: count and payload must be non-empty")
    if count > max_points:
        raise InvalidArgument(f"batch of {count} points exceeds the limit of {max_points}")
    if count * min_point_bytes > payload_bytes:
        raise InvalidArgument(
            f"batch declares {count} points in {payload_bytes} bytes; every point takes at "
            f"least {min_point_bytes} bytes (--min-point-bytes)"
        )
