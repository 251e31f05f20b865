"""The InfluxDB `/query` endpoint (InfluxQL), as InfluxDB 1.8 and 2.x both serve it.

InfluxDB 2.x OSS and Cloud answer `/query` for a bucket through its DBRP mapping: every
2.x OSS bucket has a virtual one (database = the bucket name, or the part before `/` of a
`db/rp` name; retention policy = the part after it, or the default). A bucket mapped
otherwise needs `influx v1 dbrp create` (docs/storage.md). Authentication is the same
`Authorization: Token …` header as the 2.x API (1.8: `Token user:password`).

Thread- and greenlet-safe: one `store.http1.Client` per store keeps up to POOL_SIZE
keep-alive connections, and a request beyond them opens a connection it then drops (no
waiting). Responses are asked for in MessagePack and read whole (ns timestamps via `epoch=ns`, exact
64-bit integers): influxd encodes a 1,000-point page in MessagePack with about a quarter
less CPU than in JSON (its JSON encoder goes through reflection; docs/benchmarks.md), and
msgpack decodes it about as fast as orjson parses the JSON. A server that answers JSON
anyway (the `Content-Type` says which) is parsed with orjson. Errors become the store's
error tree here, in one place.
"""

from __future__ import annotations

import struct
import urllib.parse
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson

from store.base import StoreError, StoreUnavailable
from store.http1 import Client

POOL_SIZE = 16
# influxd picks its encoder by an exact match of the whole Accept header (1.8 and 2.x).
MSGPACK = "application/x-msgpack"


@dataclass(frozen=True, slots=True)
class Series:
    """One result series: its group-by tags, its columns and its rows."""

    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]]


def dbrp(bucket: str) -> dict[str, str]:
    """Return the `db` (and `rp`) query parameters a bucket name maps to."""
    db, slash, rp = bucket.partition("/")
    return {"db": db, "rp": rp} if slash and rp else {"db": db}


class QueryClient:
    """Runs InfluxQL statements against one bucket through `POST /query`."""

    def __init__(self, url: str, bucket: str, token: str, timeout_ms: int = 10_000) -> None:
        self._form = urllib.parse.urlencode({**dbrp(bucket), "epoch": "ns", "q": ""}).encode()
        headers = {"Authorization": f"Token {token}", "Accept": MSGPACK}
        self._http = Client(url, headers, timeout_ms / 1000, POOL_SIZE)

    def series(self, statement: str) -> list[Series]:
        """Run one statement; return its series (empty when nothing matched)."""
        [result] = self.results([statement])
        return result

    def results(self, statements: list[str]) -> list[list[Series]]:
        """Run several statements in one request; return each one's series, in order."""
        body = self._post(";".join(statements))
        results = body.get("results")
        if not isinstance(results, list) or len(results) != len(statements):
            raise StoreError(f"InfluxQL query failed: {str(body.get('error', body))[:300]}")
        out = []
        for result in results:
            if "error" in result:
                raise StoreError(f"InfluxQL query failed: {str(result['error'])[:300]}")
            out.append([
                Series(s.get("tags") or {}, s["columns"], s["values"])
                for s in result.get("series", ())
            ])  # fmt: skip
        return out

    def _post(self, q: str) -> dict[str, Any]:
        form = self._form + urllib.parse.quote_plus(q).encode()  # `q` is the form's last field
        try:
            answer = self._http.post("/query", form)
        except OSError as exc:  # refused, reset, TLS, the deadline (store.http1.HttpError)
            raise StoreUnavailable(f"InfluxDB query failed: {type(exc).__name__}: {exc}") from exc
        if answer.status != 200:
            raise _status_error(answer.status, answer.body, answer.content_type)
        try:
            return _decode(answer.content_type, answer.body)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:  # orjson's: ValueError
            raise StoreUnavailable(f"InfluxDB answered no JSON or MessagePack: {exc}") from exc

    def close(self) -> None:
        """Drop the pooled connections."""
        self._http.close()


def _msgp_time(code: int, data: bytes) -> Any:
    """Return a time in tinylib/msgp's extension (type 5: int64 s, uint32 ns) as ns.

    With `epoch=ns` influxd sends times as integers; this keeps a server that does not
    convert them (its writer sends Go times as this extension) from handing out objects.
    """
    if code == 5 and len(data) == 12:
        seconds, nanos = struct.unpack(">qI", data)
        return seconds * 1_000_000_000 + nanos
    return msgpack.ExtType(code, data)


def _decode(content_type: str, data: bytes) -> dict[str, Any]:
    """Return a `/query` body as a dict, by its content type (MessagePack or JSON)."""
    if content_type.startswith(MSGPACK):
        parsed = msgpack.unpackb(data, ext_hook=_msgp_time, timestamp=2)  # timestamps: ns
    else:
        parsed = orjson.loads(data)
    if not isinstance(parsed, dict):
        raise ValueError(f"the body is a {type(parsed).__name__}, not an object")
    return parsed


def _status_error(status: int, data: bytes, content_type: str = "") -> StoreError:
    try:
        message = str(_decode(content_type, data).get("error", ""))
    except (ValueError, TypeError, msgpack.UnpackException):
        message = data[:300].decode(errors="replace")
    detail = f"InfluxDB query failed: HTTP {status}: {message[:300]}"
    if status >= 500 or status in (408, 429):
        return StoreUnavailable(detail)
    if status == 404:
        detail += " (on InfluxDB 2.x: does the bucket have a DBRP mapping? docs/storage.md)"
    return StoreError(detail)
