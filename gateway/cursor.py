"""Opaque page cursors: base64url of a small JSON keyset, bound to the query that made it.

A cursor holds the keyset position of the last item served (a uuid for GPU lists; a
(time_ns, metric) pair for telemetry) and a fingerprint of the query's filters. It is validated,
not signed: a position grants nothing the client could not ask for directly, so forging one only
moves the page. A cursor from another query, or any malformed cursor, is a 400.

The JSON is UTF-8 (not ASCII-escaped): a position holds a name of up to 256 characters
(`store.schema.MAX_TAG_LEN`), so a cursor is at most ~1,400 characters (`MAX_LEN` allows
for it), where `\\uXXXX` escapes made non-ASCII names up to three times longer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any

from gateway.errors import BadRequest

VERSION = 1
# Base64 of (4 bytes x 256 characters + the version and fingerprint), with room to spare.
MAX_LEN = 2048
_ALPHABET = re.compile(r"[A-Za-z0-9_-]+={0,2}")


def fingerprint(*parts: object) -> str:
    """Return a short stable digest of the query filters a cursor belongs to."""
    canonical = json.dumps(parts, separators=(",", ":"), sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def encode(position: list[Any], query: str) -> str:
    """Return the cursor text for `position` within the query with fingerprint `query`."""
    raw = json.dumps([VERSION, query, position], separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def parse(value: str) -> str:
    """Return a cursor parameter when it can be a cursor (the `CURSOR` parameter's parser)."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > MAX_LEN:
        raise ValueError(f"longer than {MAX_LEN} characters: not a cursor this API issued")
    if not _ALPHABET.fullmatch(value):
        raise ValueError("not base64url: not a cursor this API issued")
    return value


def _bad(reason: str) -> BadRequest:
    return BadRequest(f"cursor: {reason}", parameter="cursor")


def decode(text: str, query: str) -> list[Any]:
    """Return the position a cursor holds, raising 400 unless it belongs to this query."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        doc = json.loads(raw)
    except (binascii.Error, ValueError):
        raise _bad("not a cursor this API issued") from None
    if not (isinstance(doc, list) and len(doc) == 3 and isinstance(doc[2], list)):
        raise _bad("not a cursor this API issued")
    if type(doc[0]) is not int or doc[0] != VERSION:
        raise _bad("issued by another API version; restart from the first page")
    if doc[1] != query:
        raise _bad("belongs to a different query; keep the filters of the first page")
    if not all(_storable(item) for item in doc[2]):
        raise _bad("not a cursor this API issued")
    return doc[2]


def _storable(item: object) -> bool:
    """False for a string no store could hold (a lone surrogate is not UTF-8)."""
    if not isinstance(item, str):
        return True
    try:
        item.encode()
    except UnicodeEncodeError:
        return False
    return True


def time_key(text: str, query: str) -> tuple[int, str]:
    """Return the (time_ns, metric) keyset a telemetry cursor holds."""
    position = decode(text, query)
    valid = (
        len(position) == 2
        and type(position[0]) is int
        and 0 <= position[0] < 2**63
        and isinstance(position[1], str)
    )
    if not valid:
        raise _bad("not a telemetry cursor")
    return position[0], position[1]


def uuid_key(text: str, query: str) -> str:
    """Return the uuid a GPU-list cursor holds."""
    return name_key(text, query, "GPU-list")


def name_key(text: str, query: str, what: str = "list") -> str:
    """Return the name (uuid, hostname, metric) a list cursor holds."""
    position = decode(text, query)
    if len(position) != 1 or not isinstance(position[0], str) or not position[0]:
        raise _bad(f"not a {what} cursor")
    return position[0]
