"""Times on the wire: RFC 3339 (any offset, up to nanoseconds) or Unix seconds in; RFC 3339 out.

All parsing is exact integer arithmetic on nanoseconds (never floats), so a bound written the way
the API printed a point's time selects exactly that point.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone

from store.validate import MAX_NS

NS_PER_S = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})"
)
# What an unencoded "+02:00" offset becomes after URL decoding.
_PLUS_AS_SPACE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)? \d{2}:\d{2}")
_UNIX = re.compile(r"(\d{1,12})(?:\.(\d+))?")
_DURATION = re.compile(r"([1-9]\d{0,9})(ns|us|ms|s|m|h|d)")
_UNIT_NS = {
    "ns": 1,
    "us": 1_000,
    "ms": 1_000_000,
    "s": NS_PER_S,
    "m": 60 * NS_PER_S,
    "h": 3600 * NS_PER_S,
    "d": 86400 * NS_PER_S,
}
TIME_HELP = "RFC 3339 (e.g. 2024-05-01T12:00:00.5+02:00) or Unix seconds (e.g. 1714557600.5)"


def _fraction_ns(digits: str | None) -> int:
    """Return nanoseconds for the digits after the decimal point (at most 9)."""
    if not digits:
        return 0
    if len(digits) > 9:
        raise ValueError("has more than 9 fractional digits (nanoseconds are the finest unit)")
    return int(digits.ljust(9, "0"))


def _offset(text: str) -> timezone:
    if text in ("Z", "z"):
        return UTC
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 23 or minutes > 59:
        raise ValueError(f"has an invalid UTC offset {text}")
    sign = -1 if text[0] == "-" else 1
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _rfc3339_ns(m: re.Match[str]) -> int:
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        stamp = datetime(year, month, day, hour, minute, second, tzinfo=_offset(m[8]))
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"is not a valid date-time ({exc})") from None
    seconds = (stamp - _EPOCH) // timedelta(seconds=1)
    return seconds * NS_PER_S + _fraction_ns(m[7])


def _parse_ns(text: str) -> int:
    if m := _RFC3339.fullmatch(text):
        ns = _rfc3339_ns(m)
    elif m := _UNIX.fullmatch(text):
        ns = int(m[1]) * NS_PER_S + _fraction_ns(m[2])
    elif _PLUS_AS_SPACE.fullmatch(text):
        raise ValueError(
            "has a space where its UTC offset's '+' should be: in a query string '+' means a "
            "space, so URL-encode it as %2B (e.g. 12:00:00%2B02:00) or use Z"
        )
    else:
        raise ValueError(f"is neither RFC 3339 nor Unix seconds: use {TIME_HELP}")
    if ns < 0:
        raise ValueError("is before 1970-01-01T00:00:00Z")
    if ns > MAX_NS:
        raise ValueError(f"is after {format_time(MAX_NS)}, the latest storable time")
    return ns


def parse_time(text: str) -> int:
    """Return nanoseconds since the epoch for an RFC 3339 date-time or a Unix-seconds number."""
    try:
        return _parse_ns(text)
    except ValueError as exc:
        raise ValueError(f"{text[:64]!r} {exc}") from None


def format_time(ns: int) -> str:
    """Return `ns` as RFC 3339 in UTC with nine fractional digits (parse_time's exact inverse)."""
    seconds, frac = divmod(ns, NS_PER_S)
    return f"{_second(seconds)}.{frac:09d}Z"


def format_times(ns: Iterable[int]) -> dict[int, str]:
    """Return `format_time` of each distinct time (a page's points share few timestamps)."""
    return {t: format_time(t) for t in set(ns)}


@functools.lru_cache(maxsize=65536)
def _second(seconds: int) -> str:
    """The date-time part of a whole second (cached: a page's points share few seconds)."""
    if seconds < 0 or seconds > 253402300799:  # outside years 1970..9999: the slow, exact way
        return (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    t = time.gmtime(seconds)
    return f"{t[0]:04d}-{t[1]:02d}-{t[2]:02d}T{t[3]:02d}:{t[4]:02d}:{t[5]:02d}"


def parse_duration(text: str) -> int:
    """Return nanoseconds for a positive duration like `500ms`, `30s`, `1m`, `6h` or `1d`."""
    m = _DURATION.fullmatch(text)
    if not m:
        raise ValueError(
            f"{text[:64]!r} is not a duration like 30s, 1m, 1h (units ns us ms s m h d)"
        )
    return int(m[1]) * _UNIT_NS[m[2]]
