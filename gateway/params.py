"""Query parameters declared once: each `Param` parses its value AND describes itself in OpenAPI.

A view reads `LIMIT.one(request.args)`; the `openapi.operation` decorator rejects parameters
the operation does not declare, and the document lists exactly the declared ones.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from werkzeug.datastructures import MultiDict

from gateway import cursor
from gateway.errors import BadRequest

T = TypeVar("T")
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000
MAX_TEXT_LEN = 256
_METRIC = re.compile(r"[A-Za-z_:][A-Za-z0-9_:.\-]{0,255}")
METRIC_PATTERN = "^" + _METRIC.pattern + "$"


@dataclass(frozen=True, slots=True)
class Param(Generic[T]):
    """One query parameter: name, OpenAPI schema and the parser (raises ValueError)."""

    name: str
    description: str
    schema: Mapping[str, Any]
    parse: Callable[[str], T]
    repeated: bool = False
    example: str | None = field(default=None, compare=False)
    required: bool = False

    def _parse(self, raw: str) -> T:
        try:
            return self.parse(raw)
        except ValueError as exc:
            raise BadRequest(f"{self.name}: {exc}", parameter=self.name) from None

    def _missing(self) -> None:
        if self.required:
            raise BadRequest(f"{self.name}: required", parameter=self.name)

    def one(self, args: MultiDict[str, str]) -> T | None:
        """Return the parsed value, None when absent (400 when required); twice is a 400."""
        values = args.getlist(self.name)
        if not values:
            self._missing()
        if len(values) > 1:
            raise BadRequest(
                f"{self.name}: given {len(values)} times; give it at most once",
                parameter=self.name,
            )
        return self._parse(values[0]) if values else None

    def many(self, args: MultiDict[str, str]) -> list[T] | None:
        """Return every parsed value of a repeatable parameter, None when absent (400 when
        required)."""
        values = args.getlist(self.name)
        if not values:
            self._missing()
        return [self._parse(v) for v in values] if values else None

    def openapi(self) -> dict[str, Any]:
        """Return the OpenAPI parameter object."""
        schema = dict(self.schema)
        if self.repeated:
            schema = {"type": "array", "items": schema}
        doc: dict[str, Any] = {
            "name": self.name,
            "in": "query",
            "required": self.required,
            "description": self.description,
            "schema": schema,
        }
        if self.repeated:
            doc.update(style="form", explode=True)
        if self.example is not None:
            doc["example"] = self.example
        return doc


def reject_unknown(args: MultiDict[str, str], params: Iterable[Param[Any]]) -> None:
    """Raise 400 naming the first query parameter the operation does not declare."""
    known = {p.name for p in params}
    for name in args:
        if name not in known:
            allowed = ", ".join(sorted(known)) or "none"
            raise BadRequest(
                f"unknown query parameter {name[:64]!r}; allowed: {allowed}", parameter=name
            )


def text(value: str) -> str:
    """Return a non-empty identifier without control characters (hostname, model)."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_TEXT_LEN:
        raise ValueError(f"longer than {MAX_TEXT_LEN} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError("holds a control character")
    return value


def metric_name(value: str) -> str:
    """Return a metric name when it has metric syntax (letters, digits, `_:.-`)."""
    if not _METRIC.fullmatch(value):
        raise ValueError(f"{value[:64]!r} is not a metric name (pattern {METRIC_PATTERN})")
    return value


def limit(value: str) -> int:
    """Return a page size in [1, MAX_LIMIT]."""
    if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise ValueError(f"{value[:32]!r} is not an integer in [1, {MAX_LIMIT}]")
    return int(value)


LIMIT = Param(
    "limit",
    f"Page size, 1 to {MAX_LIMIT}.",
    {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    limit,
)
CURSOR = Param(
    "cursor",
    "Opaque cursor from the previous page's `next_cursor`; only valid with the same query.",
    {
        "type": "string",
        "minLength": 1,
        "maxLength": cursor.MAX_LEN,
        "pattern": "^[A-Za-z0-9_-]+={0,2}$",
    },
    cursor.parse,
)
