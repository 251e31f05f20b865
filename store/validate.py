"""Validation of caller-supplied query arguments, shared by every store (raises InvalidArgument)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from store.base import AGGREGATES, Aggregate, InvalidArgument

MAX_NS = 2**63 - 2  # InfluxDB's largest timestamp; SQLite uses the same bound
MAX_LIMIT = 100_000
MAX_TEXT_LEN = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def text(name: str, value: object) -> str:
    """Return `value` when it is a usable identifier string (uuid, hostname, model, metric)."""
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidArgument(f"{name} must not be empty")
    if len(value) > MAX_TEXT_LEN:
        raise InvalidArgument(f"{name} longer than {MAX_TEXT_LEN} characters")
    if _CONTROL.search(value):
        raise InvalidArgument(f"{name} holds a control character")
    return value


def optional_text(name: str, value: object) -> str | None:
    """Return `value` checked like `text`, or None when it is None."""
    return None if value is None else text(name, value)


def metrics(values: Sequence[str] | None) -> list[str] | None:
    """Return the metric filter as a sorted, de-duplicated list, or None for all metrics."""
    if values is None:
        return None
    if isinstance(values, str):
        raise InvalidArgument("metrics must be a sequence of names, not one string")
    checked = sorted({text("metric", m) for m in values})
    if not checked:
        raise InvalidArgument("metrics must not be empty (use None for all)")
    return checked


def uuids(values: Sequence[str]) -> list[str]:
    """Return a page of GPU uuids, each checked like `text`, without repeats, in their order."""
    if isinstance(values, str):
        raise InvalidArgument("uuids must be a sequence of uuids, not one string")
    checked = list(dict.fromkeys(text("uuid", u) for u in values))
    if len(checked) > MAX_LIMIT:
        raise InvalidArgument(f"at most {MAX_LIMIT} uuids at once")
    return checked


def time_ns(name: str, value: object) -> int:
    """Return `value` when it is an integer ns timestamp InfluxDB can hold."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an integer number of nanoseconds")
    if not 0 <= value <= MAX_NS:
        raise InvalidArgument(f"{name} out of range [0, {MAX_NS}]")
    return value


def time_range(start_ns: object, end_ns: object) -> tuple[int, int]:
    """Return (start_ns, end_ns), both inclusive, when start <= end."""
    start, end = time_ns("start_ns", start_ns), time_ns("end_ns", end_ns)
    if start > end:
        raise InvalidArgument("start_ns is after end_ns")
    return start, end


def positive(name: str, value: object, maximum: int = MAX_LIMIT) -> int:
    """Return `value` when it is an integer in [1, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidArgument(f"{name} must be an integer in [1, {maximum}]")
    return value


def cursor(value: object) -> tuple[int, str] | None:
    """Return the keyset cursor (time_ns, metric), or None."""
    if value is None:
        return None
    if not isinstance(value, tuple) or len(value) != 2:
        raise InvalidArgument("after must be a (time_ns, metric) pair")
    return time_ns("after.time_ns", value[0]), text("after.metric", value[1])


def index(value: object) -> int:
    """Return `value` when it is a non-negative host-local GPU index."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument("GPU index must be a non-negative integer")
    return value


def aggregate(value: object) -> Aggregate:
    """Return `value` when it names a supported aggregate."""
    for agg in AGGREGATES:
        if value == agg:
            return agg
    raise InvalidArgument(f"agg must be one of {', '.join(AGGREGATES)}")
