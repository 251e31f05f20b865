"""What both streamer modes share: one producer-group member's lifecycle around its loop.

A `ProducingMember` owns the producer, the group membership (`gputel.transport`: a
walbroker producer-group member, or on Kafka the sole owner of a transactional id) and the
partitions it holds (`streamer.ownership`). `run` joins the
group, connects the producer (retrying until the broker answers or `stop` is called), runs
the mode's `_loop`, then shuts down: flush, commit, leave the group. The CSV mode
(`streamer.runner.Streamer`) and the scrape mode (`streamer.scraping.ScrapeStreamer`) only
write their loop and the hooks `_connected`, `_flush`, `_closing` and `_release`.

Threads: `run` and the hooks run on the caller's thread; `stop` and `ready` on any thread
(a signal handler too); `_on_revoke` on the consumer's io thread (it only notes the
partitions and wakes the loop); `_on_ack` on the producer's io thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

from gputel.transport import factory
from gputel.transport.base import StreamMember, StreamProducer
from streamer.columns import SourceError
from streamer.config import StreamerConfig
from streamer.metrics import StreamerMetrics
from streamer.ownership import Ownership
from walbroker.errors import AccessError, BrokerError

log = logging.getLogger(__name__)


class ProducingMember:
    """A member of the streamers' producer group that publishes what its `_loop` produces."""

    def __init__(self, config: StreamerConfig, metrics: StreamerMetrics) -> None:
        self.config, self.metrics = config, metrics
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._started = False
        # Batches arrive encoded (`streamer.encode`, `send_batch`): no per-item encoder.
        link = factory.stream_link(
            config.transport(), config.group, config.topic,
            on_ack=self._on_ack, on_backpressure=lambda _exc: metrics.backpressure.inc(),
            on_revoke=self._on_revoke, on_assignment=lambda _a: self._wake.set(),
            batch_size=config.batch_size, linger_ms=config.linger_ms,
            max_pending_points=config.max_pending_points,
            session_timeout_ms=config.session_timeout_ms,
        )  # fmt: skip
        self.producer: StreamProducer = link[0]
        self.member: StreamMember = link[1]
        self.own = Ownership(
            self.member, self._flush,
            track=lambda p, epoch, progress: self.producer.track(p, config.group, epoch, progress),
            untrack=self.producer.untrack,
        )  # fmt: skip
        metrics.batch_pending.set_function(lambda: self.producer.pending_points)

    # ---- what a mode writes ------------------------------------------------------------------

    def _loop(self) -> None:
        """Produce until finished or stopped (the caller's thread)."""
        raise NotImplementedError

    def _connected(self, partitions: int) -> None:
        """The producer is up and the topic has `partitions` partitions: get ready, log it."""
        raise NotImplementedError

    def _flush(self, timeout_s: float) -> None:
        """Hand everything taken so far to the producer and wait for its acknowledgement."""
        self.producer.flush(timeout_s)

    def _closing(self) -> None:
        """Shutdown starts: stop taking new work (before the final flush)."""

    def _release(self) -> None:
        """Release what the mode holds (threads, connections): after shutdown or a fatal error."""

    # ---- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run` to shut down gracefully (safe from a signal handler or another thread)."""
        self._stop.set()
        self._wake.set()

    def ready(self) -> bool:
        """True once joined to the group and connected, until shutdown starts."""
        return self._started and self.own.connected and not self._stop.is_set()

    def run(self) -> int:
        """Produce until finished or stopped; return the process exit code."""
        self.member.start()
        try:
            if self._connect():
                self._loop()
            return self._shutdown()
        except (BrokerError, SourceError) as exc:
            code = exc.code.name if isinstance(exc, BrokerError) else "SOURCE"
            log.error("streaming failed for good", extra={"code": code, "reason": str(exc)})
            self._release()
            self.member.close()
            with contextlib.suppress(TimeoutError, BrokerError):  # the error above is the one
                self.producer.close(timeout_s=1)
            return 1

    def _connect(self) -> bool:
        """Start the producer (learning the partition count); False if stopped first."""
        while not self._stop.is_set():
            try:
                self.producer.start(timeout_s=5)
            except AccessError:
                raise  # a wrong token or TLS setting does not heal by waiting
            except BrokerError as exc:
                log.warning(
                    "broker not reachable; retrying",
                    extra={"broker": self.config.broker, "reason": str(exc)},
                )
                continue
            self._connected(self.producer.partitions)
            self._started = True
            return True
        return False

    def _shutdown(self) -> int:
        """Flush, commit, leave the group; return 0 if everything sent was committed."""
        self._closing()
        ok = self.own.shutdown(self.config.shutdown_timeout_s) if self._started else True
        self.member.close()
        try:
            self.producer.close(timeout_s=1)
        except TimeoutError:
            ok = False
        self._release()
        self.metrics.partitions_owned.set(0)
        log.info("streamer stopped", extra={"clean": ok})
        return 0 if ok else 1

    # ---- group and producer callbacks --------------------------------------------------------

    def _on_revoke(self, partitions: set[int]) -> None:
        self.own.revoked(partitions)
        self._wake.set()

    def _on_ack(self, partition: int, count: int, created: float) -> None:
        self.own.on_ack(partition, count)
        self.metrics.published.inc(count)
        self.metrics.publish_latency.observe(time.monotonic() - created)
