"""Parsing of the CSV's own `timestamp` column into nanoseconds since the Unix epoch."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:[.,](\d{1,9}))?\s*([Zz]|[+-]\d{2}:?\d{2})?"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)


def parse_timestamp_ns(text: str) -> int:
    """Return `text` as ns since the epoch; raise `ValueError` if it is no timestamp.

    Accepted: RFC 3339 / ISO 8601 date-times with up to nine fraction digits and a `Z`
    or `±hh:mm` offset (no offset means UTC), and Unix seconds (`1752871350.5`).
    """
    text = text.strip()
    m = _RFC3339.fullmatch(text)
    if m is None:
        return _unix_seconds_ns(text)
    date, time, fraction, offset = m.groups()
    if offset is None or offset in "Zz":
        offset = "+00:00"
    elif ":" not in offset:
        offset = f"{offset[:3]}:{offset[3:]}"
    at = datetime.fromisoformat(f"{date}T{time}{offset}")
    seconds = (at - _EPOCH) // _SECOND
    return seconds * 1_000_000_000 + int((fraction or "0").ljust(9, "0"))


def _unix_seconds_ns(text: str) -> int:
    """Return decimal Unix seconds as ns (exact for up to nine fraction digits)."""
    whole, dot, fraction = text.partition(".")
    if not whole.lstrip("-").isdigit() or (dot and not fraction.isdigit()) or len(fraction) > 9:
        raise ValueError(f"not a timestamp: {text!r}")
    ns = abs(int(whole)) * 1_000_000_000 + int(fraction.ljust(9, "0") or "0")
    return -ns if whole.startswith("-") else ns
