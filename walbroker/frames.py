"""Malformed frames: a request that does not parse ends its call with INVALID_ARGUMENT.

grpc's own handling answers INTERNAL ("Exception deserializing request!") and
leaves the servicer's request iterator in a state the handler does not expect.
This interceptor wraps every method's deserializer instead: bytes that do not
parse (including invalid UTF-8 in a string field) become a `Malformed` marker,
and the wrapped handler turns it into InvalidArgument — for a unary call at once,
for a stream when the handler reads that message (acks already due are still
sent by Publish before the stream ends).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from walbroker.errors import InvalidArgument
from walbroker.metrics import BrokerMetrics
from walbroker.status import abort

log = logging.getLogger(__name__)


class Malformed:
    """Stands for a request whose bytes did not parse."""

    def __init__(self, size: int, error: str) -> None:
        self.size = size
        self.error = error

    def exception(self) -> InvalidArgument:
        """The error its call ends with."""
        return InvalidArgument(f"malformed request message ({self.size} bytes): {self.error}")


class MalformedFrames(grpc.ServerInterceptor):  # type: ignore[misc]
    """Turns undecodable requests into INVALID_ARGUMENT (counted by method)."""

    def __init__(self, metrics: BrokerMetrics) -> None:
        self.metrics = metrics

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        name = details.method.rsplit("/", 1)[-1]
        parse = _safe(handler.request_deserializer)
        if handler.unary_unary is not None:
            return handler._replace(
                request_deserializer=parse, unary_unary=self._unary(name, handler.unary_unary)
            )
        if handler.stream_stream is not None:
            return handler._replace(
                request_deserializer=parse, stream_stream=self._stream(name, handler.stream_stream)
            )
        return handler  # the broker has no other kinds of methods

    def _unary(self, name: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                self._count(name, request)
                abort(context, request.exception())
            return behavior(request, context)

        return checked

    def _stream(self, name: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        def checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            return behavior(self._requests(name, requests), context)  # type: ignore[no-any-return]

        return checked

    def _requests(self, name: str, requests: Iterator[Any]) -> Iterator[Any]:
        for req in requests:
            if isinstance(req, Malformed):
                self._count(name, req)
                raise req.exception()
            yield req

    def _count(self, name: str, bad: Malformed) -> None:
        self.metrics.invalid.labels(name).inc()
        log.warning("malformed request", extra={"method": name, "error": bad.error})


def _safe(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # any parse failure is the client's bad frame
            return Malformed(len(data), str(exc) or type(exc).__name__)

    return deserialize
