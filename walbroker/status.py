"""BrokerError to the wire, in one place on the server side: per-operation `Status` or `abort`.

The Broker and Admin servicers, the Consume session and the interceptors all end
calls through here, so no two of them import each other for it.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from proto.gen import walbroker_pb2 as pb
from walbroker.errors import BrokerError, Code


def status_of(exc: BrokerError | None) -> pb.Status:
    """The wire status of an operation's outcome (per batch, per commit)."""
    if exc is None:
        return pb.Status(code=Code.OK)
    return pb.Status(code=int(exc.code), message=exc.message, retry_after_ms=exc.retry_after_ms)


def grpc_code(exc: BrokerError) -> grpc.StatusCode:
    """The grpc.StatusCode of `exc`."""
    return grpc.StatusCode[Code(exc.code).name]


def abort(context: Any, exc: BrokerError) -> NoReturn:
    """End the RPC with `exc`'s status code (and retry-after in trailing metadata)."""
    if exc.retry_after_ms:
        context.set_trailing_metadata((("retry-after-ms", str(exc.retry_after_ms)),))
    context.abort(grpc_code(exc), exc.message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises
