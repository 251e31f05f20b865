"""TCP connections to the gRPC port: a cap, an idle timeout, a handshake timeout, a count.

A connection takes a file descriptor (and ~15 KiB) whatever it does. The stream limits
(`walbroker.limits`) only see calls, so a client that connects, completes the HTTP/2
handshake and opens no stream was unbounded: 20,100 such connections took all 20,000 of
the process's file descriptors, and health checks, Publish and /metrics timed out for
everyone. gRPC core bounds them, given these channel arguments (`server_options`):

- `grpc.max_allowed_incoming_connections` (`--max-connections`): past it gRPC accepts a
  new connection and closes it at once; the client sees UNAVAILABLE ("Socket closed")
  and retries with backoff. Connections already open, and their streams, are untouched.
  The count is per listening address (`--listen localhost:…` may bind two).
- `grpc.max_connection_idle_ms` (`--connection-idle-timeout-s`): a connection with no call
  open that long gets a GOAWAY and is closed; a client's channel reconnects on its next
  call. Open streams (bounded by `--max-streams`) keep their connection.
- `grpc.server_handshake_timeout_ms` (`--handshake-timeout-s`): a connection that has not
  finished its TLS handshake and sent its HTTP/2 settings by then is closed.

HTTP/2 ping floods are bounded by gRPC's defaults (a ping more often than every 5 minutes
without data is a strike; the third strike closes the connection with GOAWAY
"too_many_pings").

gRPC core exports neither its connection count nor its refusals, so `ConnectionSampler`
reads the kernel's socket table (/proc/self/net/tcp and tcp6: sockets whose local port is
the gRPC port, established or closed by the peer but not yet by us) once a second from the
broker's reaper loop, and counts the seconds the cap was reached, when new connections are
being closed. `ensure_fd_budget` makes sure the cap fits the process's file limit.
"""

from __future__ import annotations

import logging
import resource
import time
from collections.abc import Callable

from walbroker.disk import StartupError
from walbroker.metrics import BrokerMetrics

log = logging.getLogger(__name__)

# File descriptors kept for everything but gRPC connections: LMDB, the metrics endpoint and
# its scrapers, gRPC's own pipes and epoll, log files.
FD_RESERVE = 512
# /proc/net/tcp states: a connection that holds a descriptor (01 ESTABLISHED; 08 CLOSE_WAIT,
# closed by the peer, not yet by gRPC).
_OPEN_STATES = frozenset({"01", "08"})
TABLES = ("/proc/self/net/tcp", "/proc/self/net/tcp6")
# One "connection limit reached" log line per this many seconds at most.
_WARN_EVERY_S = 60.0


def server_options(
    max_connections: int, idle_timeout_s: float, handshake_timeout_s: float
) -> list[tuple[str, int]]:
    """The gRPC server channel arguments of the three bounds (module docstring)."""
    for name, value in (
        ("--max-connections", max_connections),
        ("--connection-idle-timeout-s", idle_timeout_s),
        ("--handshake-timeout-s", handshake_timeout_s),
    ):
        if value <= 0:
            raise ValueError(f"{name} must be positive, not {value}")
    return [
        ("grpc.max_allowed_incoming_connections", max_connections),
        ("grpc.max_connection_idle_ms", max(1, round(idle_timeout_s * 1000))),
        ("grpc.server_handshake_timeout_ms", max(1, round(handshake_timeout_s * 1000))),
    ]


def ensure_fd_budget(max_connections: int) -> int:
    """Make room for `max_connections` open descriptors plus `FD_RESERVE`; the soft limit.

    The soft limit (`ulimit -n`) is raised up to the hard one when it is too low, as Go and
    the JVM do at start; StartupError when even the hard limit is too low.
    """
    needed = max_connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise StartupError(
                f"--max-connections {max_connections} needs {needed} open files (one per "
                f"connection, {FD_RESERVE} for the log and the metrics endpoint) but this "
                f"process may open at most {hard} (ulimit -Hn): lower --max-connections or "
                "raise the limit"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        soft = needed
    return int(soft)


def count_open(port: int, tables: tuple[str, ...] = TABLES) -> int | None:
    """Open TCP connections whose local port is `port` (None without /proc)."""
    want = f":{port:04X}"
    total, found = 0, False
    for path in tables:
        try:
            with open(path) as f:
                next(f, None)  # the header
                for line in f:
                    fields = line.split(None, 4)
                    if len(fields) > 3 and fields[1].endswith(want) and fields[3] in _OPEN_STATES:
                        total += 1
            found = True
        except OSError:
            continue
    return total if found else None


class ConnectionSampler:
    """Samples the open connections into `open_connections`; counts time at the cap."""

    def __init__(
        self,
        metrics: BrokerMetrics,
        max_connections: int,
        port: Callable[[], int],
        interval_s: float = 1.0,
    ) -> None:
        self.metrics = metrics
        self.max_connections = max_connections
        self.port = port
        self.interval_s = interval_s
        self._next = 0.0
        self._last = 0.0
        self._warned = -_WARN_EVERY_S

    def sample(self) -> None:
        """Take a reading if `interval_s` has passed since the last one."""
        now = time.monotonic()
        if now < self._next or not self.port():
            return
        self._next = now + self.interval_s
        n = count_open(self.port())
        if n is None:
            return
        self.metrics.connections.set(n)
        since, self._last = (now - self._last if self._last else 0.0), now
        if n >= self.max_connections:
            self.metrics.connection_limit_seconds.inc(min(since, 2 * self.interval_s))
            if now - self._warned >= _WARN_EVERY_S:
                self._warned = now
                log.warning(
                    "connection limit reached; new connections are closed at once",
                    extra={"open": n, "limit": "--max-connections", "max": self.max_connections},
                )
