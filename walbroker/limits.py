"""Concurrency limits at the door: how many Publish/Consume streams may be open, in total and
per client address.

The broker runs grpc's synchronous server, where every open stream holds one
worker thread for its whole life (Publish one more for its reader). The pool is
sized `max_streams + reserved_workers`, and this interceptor refuses a stream
beyond `max_streams` (or beyond `max_streams_per_peer` from one address) with
RESOURCE_EXHAUSTED naming the limit, so `reserved_workers` threads are always
left for unary calls: health checks, Metadata and every Admin call are never
starved by idle streams. (Measured choice, see docs/limits.md: with 1,000 idle
streams open, health and admin calls stay in the millisecond range.)

Thread-safe: the counters are guarded by one lock; a slot is taken when the
stream's handler starts and given back exactly once when the RPC ends.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from walbroker.errors import ResourceExhausted
from walbroker.metrics import BrokerMetrics
from walbroker.status import abort

log = logging.getLogger(__name__)

STREAM_METHODS = frozenset({"/walbroker.v1.Broker/Publish", "/walbroker.v1.Broker/Consume"})


def peer_host(peer: str) -> str:
    """The address of a gRPC peer without its port: 'ipv4:10.0.0.7:5312' -> '10.0.0.7'."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = rest.rpartition(":")[0] or rest
        return host.strip("[]")
    return rest or peer  # unix sockets and the like: the path, as given


class StreamLimits(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses Publish/Consume streams beyond the total and per-peer limits."""

    def __init__(self, max_streams: int, max_per_peer: int, metrics: BrokerMetrics) -> None:
        self.max_streams = max_streams
        self.max_per_peer = max_per_peer
        self.metrics = metrics
        self._lock = threading.Lock()
        self._open = 0
        self._by_peer: Counter[str] = Counter()
        self._by_method: Counter[str] = Counter()

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None or details.method not in STREAM_METHODS:
            return handler
        return handler._replace(stream_stream=self._guard(details.method, handler.stream_stream))

    def _guard(self, method: str, behavior: Callable[..., Iterator[Any]]) -> Callable[..., Any]:
        name = method.rsplit("/", 1)[1]

        def guarded(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            peer = peer_host(context.peer())
            refusal = self._acquire(peer, name)
            if refusal is not None:
                abort(context, refusal)
            released = threading.Event()

            def release() -> None:
                if not released.is_set():
                    released.set()
                    self._release(peer, name)

            context.add_callback(release)
            try:
                yield from behavior(requests, context)
            finally:
                release()

        return guarded

    def _acquire(self, peer: str, method: str) -> ResourceExhausted | None:
        with self._lock:
            if self._open >= self.max_streams:
                limit, detail = "max_streams", f"{self.max_streams} open streams (--max-streams)"
            elif self._by_peer[peer] >= self.max_per_peer:
                limit = "max_streams_per_peer"
                detail = f"{self.max_per_peer} open streams from {peer} (--max-streams-per-peer)"
            else:
                self._open += 1
                self._by_peer[peer] += 1
                self._by_method[method] += 1
                self.metrics.streams.labels(method).set(self._by_method[method])
                return None
        self.metrics.refused.labels(limit).inc()
        log.warning("stream refused", extra={"limit": limit, "peer": peer, "method": method})
        return ResourceExhausted(f"stream limit reached: {detail}", retry_after_ms=1000)

    def _release(self, peer: str, method: str) -> None:
        with self._lock:
            self._open -= 1
            self._by_peer[peer] -= 1
            if self._by_peer[peer] <= 0:
                del self._by_peer[peer]
            self._by_method[method] -= 1
            self.metrics.streams.labels(method).set(self._by_method[method])
