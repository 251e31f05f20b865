"""The streaming loop: the parsed CSV's rows of the owned partitions, paced, into the producer.

One `Streamer` per process. Its thread (the caller of `run`) follows the producer group
(`Ownership.reconcile`), sends each owned partition's next rows in chunks (round robin
over partitions, so the stream keeps roughly the file's time order), stamps each row
with the processing time in ns (strictly increasing within the process, so no two
points of a series share a timestamp), and commits progress after acknowledgements.

A chunk is `--batch-size` rows (fewer at the end of a pass, or a burst of the pacer
when that is smaller) and goes to the producer as one encoded batch
(`streamer.chunks`): its rows are stamped when the chunk is sent, so batching adds
no latency, and a paced stream still sends full batches — one publish, one broker
group commit and one delivery per batch — instead of whatever trickled in within
the producer's linger time.

When is the job finished (`--passes K`)? A partition is done when its committed
progress is K x its rows. A streamer whose own partitions are all done stays in the
group (ready to take over the partitions of a streamer that stops) until the group's
committed progress of EVERY partition of the topic has reached K x that partition's
rows (read with the Admin service's DescribeGroup); then it leaves and exits 0. So
all streamers of a finished job exit, and none exits while some GPU still has rows
to send. All streamers of a group must read the same CSV. `--forever` never finishes.

Pacing: `--rate` is rows per second of this process (a token bucket over all its
partitions, granting whole chunks); `--pass-interval` starts each partition's next
pass at most once per interval. Rejected rows are counted (and logged once per reason)
each time this process completes a pass over all the partitions it owns.

Shutdown (`stop`, e.g. on SIGTERM): stop reading, flush the pending batches, wait for
their acknowledgement, commit progress, leave the group.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import grpc

from proto.gen import walbroker_admin_pb2 as apb
from proto.gen import walbroker_admin_pb2_grpc as apb_grpc
from proto.gen import walbroker_pb2 as pb
from streamer.chunks import ChunkEncoder
from streamer.config import StreamerConfig
from streamer.metrics import StreamerMetrics
from streamer.ownership import Ownership, PartitionState
from streamer.pacing import TokenBucket
from streamer.plan import PartitionPlan
from streamer.source import SourceRows, record_pass
from walbroker.client import channel, error_from_rpc
from walbroker.consumer import Consumer
from walbroker.credentials import ClientSecurity
from walbroker.errors import AccessError, BrokerError
from walbroker.inflight import Batch
from walbroker.producer import Producer

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.2
FINISH_CHECK_S = 0.5


def group_progress(
    broker: str,
    group: str,
    topic: str,
    timeout_s: float = 5.0,
    security: ClientSecurity | None = None,
) -> dict[int, int]:
    """Return the committed progress of every partition of `topic` in `group` (Admin RPC)."""
    with channel(broker, security) as ch:
        try:
            resp = apb_grpc.AdminStub(ch).DescribeGroup(
                apb.DescribeGroupRequest(group=group), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, ch) from None
    return {
        pl.partition: pl.committed_offset
        for pl in resp.partitions
        if pl.topic == topic and pl.HasField("committed_offset")
    }


class Streamer:
    """Streams a parsed DCGM CSV into a topic as one member of a producer group."""

    def __init__(
        self,
        config: StreamerConfig,
        rows: SourceRows,
        metrics: StreamerMetrics,
        time_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.config, self.rows, self.metrics = config, rows, metrics
        self.time_ns = time_ns
        self._stop = threading.Event()
        self._wake = threading.Event()
        # Chunks arrive encoded (`streamer.chunks`, `send_batch`): no per-item encoder.
        self.producer: Producer[object] = Producer(
            config.broker,
            config.topic,
            batch_size=config.batch_size,
            linger_ms=config.linger_ms,
            max_pending_points=config.max_pending_points,
            on_ack=self._on_ack,
            on_backpressure=lambda _exc: metrics.backpressure.inc(),
            security=config.security,
        )
        self.member = Consumer(
            config.broker,
            config.group,
            config.topic,
            role="producer",
            session_timeout_ms=config.session_timeout_ms,
            on_revoke=self._on_revoke,
            on_assignment=lambda _a: self._wake.set(),
            security=config.security,
        )
        self.own = Ownership(
            self.member, self.producer.flush,
            track=lambda p, epoch, progress: self.producer.track(p, config.group, epoch, progress),
            untrack=self.producer.untrack,
        )  # fmt: skip
        self.plan: PartitionPlan | None = None
        self.chunks: ChunkEncoder | None = None
        self._bucket = (
            TokenBucket(config.rate_rows_per_s) if config.rate_rows_per_s is not None else None
        )
        self._started = False
        self._last_ns = 0
        self._recorded_pass = -1  # the last pass over every owned partition counted
        self._first_pass: dict[int, int] = {}  # partition -> the pass this process began in
        metrics.batch_pending.set_function(lambda: self.producer.pending_points)

    # ---- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run` to shut down gracefully (safe from a signal handler or another thread)."""
        self._stop.set()
        self._wake.set()

    def ready(self) -> bool:
        """True once joined to the group and connected, until shutdown starts."""
        return self._started and self.own.connected and not self._stop.is_set()

    def run(self) -> int:
        """Stream until finished or stopped; return the process exit code."""
        self.member.start()
        try:
            if not self._connect():
                return self._shutdown()
            self._loop()
            return self._shutdown()
        except BrokerError as exc:
            log.error("publish failed for good", extra={"code": exc.code.name, "reason": str(exc)})
            self.member.close()
            with contextlib.suppress(TimeoutError, BrokerError):  # the error above is the one
                self.producer.close(timeout_s=1)
            return 1

    def _connect(self) -> bool:
        """Start the producer (learning the partition count); False if stopped first."""
        while not self._stop.is_set():
            try:
                self.producer.start(timeout_s=5)
                break
            except AccessError:
                raise  # a wrong token or TLS setting does not heal by waiting
            except BrokerError as exc:
                log.warning(
                    "broker not reachable; retrying",
                    extra={"broker": self.config.broker, "reason": str(exc)},
                )
        else:
            return False
        self.plan = PartitionPlan(self.rows, self.producer.partitions)
        self.chunks = ChunkEncoder(self.rows, self.plan, self.config.encode_cache_bytes)
        self._started = True
        log.info(
            "streaming",
            extra={
                "topic": self.config.topic, "group": self.config.group,
                "partitions": self.plan.partitions, "rows": len(self.rows),
                "passes": self.config.passes or "forever",
            },
        )  # fmt: skip
        return True

    def _shutdown(self) -> int:
        """Flush, commit, leave the group; return 0 if everything sent was committed."""
        ok = self.own.shutdown(self.config.shutdown_timeout_s) if self._started else True
        self.member.close()
        try:
            self.producer.close(timeout_s=1)
        except TimeoutError:
            ok = False
        self.metrics.partitions_owned.set(0)
        cache = self.chunks
        log.info(
            "streamer stopped",
            extra={
                "clean": ok,
                "encode_cache_hits": cache.hits if cache else 0,
                "encode_cache_misses": cache.misses if cache else 0,
                "encode_cache_bytes": cache.cached_bytes if cache else 0,
            },
        )
        return 0 if ok else 1

    # ---- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        next_commit = time.monotonic() + self.config.commit_interval_s
        next_finish_check = 0.0
        while not self._stop.is_set():
            if self.member.failure is not None:
                raise self.member.failure  # the group refused our credentials
            self.own.reconcile()
            self.metrics.partitions_owned.set(len(self.own.active))
            sent = self._produce_round() if self.own.connected else 0
            now = time.monotonic()
            if self.own.connected and (now >= next_commit or not sent):
                self.own.commit()
                next_commit = now + self.config.commit_interval_s
            if sent:
                continue
            if now >= next_finish_check:
                next_finish_check = now + FINISH_CHECK_S
                if self._finished():
                    log.info("every partition is done; leaving the group")
                    return
            self._wake.wait(self._idle_wait_s())
            self._wake.clear()

    def _produce_round(self) -> int:
        """Send the next chunk of every owned partition that is due; return rows sent."""
        assert self.plan is not None
        total = 0
        for p in sorted(self.own.active):
            if self._stop.is_set():
                break
            st = self.own.states[p]
            n = self.plan.size(p)
            left = self._rows_left(p, st)
            if not n or not left or time.monotonic() < st.pass_started:
                continue
            start = st.sent % n
            self._first_pass.setdefault(p, st.sent // n)
            want = min(self.config.batch_size, left, n - start)
            if self._bucket is not None:
                want = self._bucket.take(want, self._stop)
            sent = self._send(p, start, start + want) if want else 0
            st.sent += sent
            total += sent
            if sent and st.sent % n == 0:
                self._pass_done(p, st, n)
        return total

    def _rows_left(self, p: int, st: PartitionState) -> int:
        """Rows still to send for `p` (a chunk's worth when streaming forever)."""
        assert self.plan is not None
        target = self.plan.target(p, self.config.passes)
        return self.config.batch_size if target is None else max(0, target - st.sent)

    def _send(self, p: int, start: int, end: int) -> int:
        """Hand rows [start, end) of partition `p`'s pass to the producer as one batch.

        Return how many rows were sent: all of them, or 0 when stopped while the
        producer's pending bound held the batch back.
        """
        assert self.chunks is not None
        count = end - start
        first = max(self.time_ns(), self._last_ns + 1)
        payload = self.chunks.encode(p, start, end, first)
        while True:
            try:
                self.producer.send_batch(p, payload, count, 1.0)
                break
            except TimeoutError:  # backpressure: the pending bound is reached
                if self._stop.is_set():
                    return 0
        self._last_ns = first + count - 1
        return count

    def _pass_done(self, p: int, st: PartitionState, n: int) -> None:
        """Account for a completed pass of partition `p`; schedule its next pass."""
        self.metrics.passes_completed.inc()
        interval = self.config.pass_interval_s
        now = time.monotonic()
        st.pass_started = max(now, st.pass_started + interval) if interval else now
        assert self.plan is not None
        passes = [
            self.own.states[q].sent // self.plan.size(q)
            for q in self.own.active
            if self.plan.size(q)
        ]
        if self._recorded_pass < 0:  # nothing counted yet: start from where this process began
            self._recorded_pass = min(self._first_pass.get(q, 0) for q in self.own.active)
        if passes and min(passes) > self._recorded_pass:
            self._recorded_pass = min(passes)
            record_pass(self.rows.report, self.metrics, self._recorded_pass)
        log.debug("partition pass done", extra={"partition": p, "progress": st.sent, "rows": n})

    def _idle_wait_s(self) -> float:
        """How long to sleep when nothing was due: until the next pass starts, at most 0.2 s."""
        now = time.monotonic()
        waits = [
            st.pass_started - now
            for st in (self.own.states[p] for p in self.own.active)
            if st.pass_started > now and self._rows_left(st.partition, st)
        ]
        return min([IDLE_WAIT_S, *waits])

    # ---- finishing ---------------------------------------------------------------------------

    def _finished(self) -> bool:
        """True when --passes K is reached by every partition of the topic (see module doc)."""
        plan, passes = self.plan, self.config.passes
        if plan is None or passes is None or not self.own.connected or not self.own.settled:
            return False
        for p in self.own.active:
            if self.own.states[p].committed < passes * plan.size(p):
                return False
        try:
            committed = group_progress(
                self.config.broker,
                self.config.group,
                self.config.topic,
                security=self.config.security,
            )
        except BrokerError as exc:
            log.info("group progress unavailable", extra={"reason": str(exc)})
            return False
        return all(committed.get(p, 0) >= passes * plan.size(p) for p in range(plan.partitions))

    # ---- producer callbacks (producer io thread) -----------------------------------------------

    def _on_revoke(self, partitions: set[int]) -> None:
        self.own.revoked(partitions)
        self._wake.set()

    def _on_ack(self, batch: Batch, ack: pb.PublishAck) -> None:
        self.own.on_ack(batch.partition, batch.count)
        self.metrics.published.inc(batch.count)
        self.metrics.publish_latency.observe(time.monotonic() - batch.created)
