"""Per-client publish byte rate: a client publishing flat out cannot take the writer from others.

Like Kafka's produce quotas, a client over its rate is *throttled*, not refused: the
broker stops reading that client's Publish stream until the client is back under
its rate, so gRPC flow control holds the client back, its acks arrive later, and
nothing is resent or lost. Other clients' streams are read as before.

A client is its principal's credential when the broker authenticates (the
bearer token, kept only as a hash; or the certificate's common name), else its
address without the port. Clients behind one address (a NAT, a proxy) share a
budget then. Each client has a token bucket of `rate` bytes per second holding
at most one second of credit; a batch larger than what is left puts the bucket
into debt, and the stream pauses until the debt is paid, so over any window the
client gets at most rate x window + one second of burst.

Thread-safe: every Publish stream's reader thread calls `take`; one lock guards
the buckets. At most `max_clients` buckets are kept (least recently used go
first; a forgotten client starts again with a full second of credit).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc

from walbroker.limits import peer_host
from walbroker.metrics import BrokerMetrics

log = logging.getLogger(__name__)

PUBLISH = "/walbroker.v1.Broker/Publish"
# A throttled stream checks this often whether its call is still alive (shutdown, cancel).
_WAIT_STEP_S = 0.25


def client_identity(metadata: Sequence[tuple[str, Any]], context: Any, authenticated: bool) -> str:
    """A Publish stream's client: its credential when the broker authenticates, else its address.

    The byte rate is charged to it, and the log's writer serves each client in turn
    (`walbroker.writequeue`).
    """
    if authenticated:
        for key, value in metadata:
            if key == "authorization":
                digest = hashlib.sha256(str(value).encode()).hexdigest()[:16]
                return f"token:{digest}"
        names = (context.auth_context() or {}).get("x509_common_name")
        if names:
            return f"cn:{names[0].decode(errors='replace')}"
    return f"peer:{peer_host(context.peer())}"


class TokenBuckets:
    """Byte-rate buckets per client, with debt (see the module docstring)."""

    def __init__(
        self,
        rate_bytes_per_s: float,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate_bytes_per_s
        self.burst = rate_bytes_per_s  # one second of credit
        self.max_clients = max_clients
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # credit, when

    def take(self, client: str, nbytes: int) -> float:
        """Charge `nbytes` to `client`; the seconds it must wait before sending more (0 if none)."""
        with self._lock:
            now = self.clock()
            credit, then = self._buckets.pop(client, (self.burst, now))
            credit = min(self.burst, credit + (now - then) * self.rate) - nbytes
            self._buckets[client] = (credit, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        return 0.0 if credit >= 0 else -credit / self.rate


class PublishQuota(grpc.ServerInterceptor):  # type: ignore[misc]
    """Throttles each client's Publish streams to `rate_bytes_per_s` of payload (0 = off)."""

    def __init__(
        self, rate_bytes_per_s: float, metrics: BrokerMetrics, by_credential: Callable[[], bool]
    ) -> None:
        self.buckets = TokenBuckets(rate_bytes_per_s) if rate_bytes_per_s > 0 else None
        self.metrics = metrics
        # Only an authenticating broker has verified the credential by the time a stream
        # gets here; on an open broker a client could invent one per stream.
        self.by_credential = by_credential

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> Any:
        handler = continuation(details)
        if handler is None or self.buckets is None or details.method != PUBLISH:
            return handler
        metadata = details.invocation_metadata or ()
        return handler._replace(stream_stream=self._wrap(handler.stream_stream, metadata))

    def _wrap(
        self, behavior: Callable[..., Iterator[Any]], metadata: Sequence[tuple[str, Any]]
    ) -> Callable[..., Iterator[Any]]:
        def throttled(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            client = self.client_of(metadata, context)
            yield from behavior(self._paced(client, requests, context), context)

        return throttled

    def client_of(self, metadata: Sequence[tuple[str, Any]], context: Any) -> str:
        """Who is charged for this stream (module docstring)."""
        return client_identity(metadata, context, self.by_credential())

    def _paced(self, client: str, requests: Iterator[Any], context: Any) -> Iterator[Any]:
        """The stream's requests, each let through only once the client is under its rate."""
        assert self.buckets is not None
        for req in requests:
            wait = self.buckets.take(client, len(req.payload))
            if wait > 0:
                self.metrics.throttled.inc()
                self.metrics.throttle_seconds.inc(wait)
                deadline = time.monotonic() + wait
                while context.is_active() and (left := deadline - time.monotonic()) > 0:
                    time.sleep(min(left, _WAIT_STEP_S))
            yield req
