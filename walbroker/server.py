"""The gRPC adapter: translates Publish / Consume / Metadata to the log and the coordinator.

BrokerError becomes a status code through `walbroker.status` only: per batch in
`PublishAck.status`, per commit in `CommitAck.status`, and for a whole stream
with `status.abort`. Every request is validated (`walbroker.validation`) before
it is queued for the log's writer, so a bad one only ever fails itself.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gputel.probes import ProbeServer
from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc
from walbroker import admin
from walbroker.config import BrokerConfig
from walbroker.connections import ConnectionSampler, ensure_fd_budget, server_options
from walbroker.errors import BrokerError, InvalidArgument, ResourceExhausted
from walbroker.frames import MalformedFrames
from walbroker.group import GroupCoordinator
from walbroker.group_retention import expire_groups, update_retention_ignored
from walbroker.guard import Guard
from walbroker.lag import group_lags
from walbroker.limits import StreamLimits, peer_host
from walbroker.log import Log
from walbroker.metrics import BrokerMetrics, ExtentRow, LagRow
from walbroker.ops import Fence
from walbroker.quota import PublishQuota, client_identity
from walbroker.security import check_exposure
from walbroker.session import Session
from walbroker.status import abort, status_of
from walbroker.types import AppendResult, TopicPartition, validate_name
from walbroker.validation import MAX_PRODUCER_ID_BYTES, validate_identifier

log = logging.getLogger(__name__)

SERVICE_NAME = "walbroker.v1.Broker"
# Publish requests read ahead of their acks, per stream.
MAX_PENDING_ACKS = 1024
# Longest a Publish stream is left unread after a batch was refused for lack of room.
MAX_REFUSAL_PAUSE_S = 1.0
_PAUSE_STEP_S = 0.25


def default_interceptors(config: BrokerConfig, metrics: BrokerMetrics, guard: Guard) -> list[Any]:
    """The server's interceptors, outermost first.

    Malformed frames first: a request that does not parse is INVALID_ARGUMENT whoever
    sent it (nothing runs on it). Then authentication, so nothing else runs for a
    stranger; then the stream limits, so a stranger never holds a stream slot; then
    the per-client publish rate, charged to the credential authentication verified.
    """
    return [
        MalformedFrames(metrics),
        guard.interceptor,
        StreamLimits(config.max_streams, config.max_streams_per_peer, metrics),
        PublishQuota(config.client_publish_bytes_per_s, metrics, lambda: guard.access.enabled),
    ]


class BrokerServicer(pb_grpc.BrokerServicer):  # type: ignore[misc]
    """The Broker service over one log and one coordinator."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.wal = broker.wal

    def Publish(
        self, request_iterator: Iterator[pb.PublishRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.PublishAck]:
        # Acks go out in request order. Only the ack's head is kept per request (the
        # payload is the writer's alone once queued), and at most this many wait, so
        # a client that sends faster than acks return is held back by flow control
        # instead of by the broker's memory.
        pending: queue.Queue[
            tuple[pb.PublishAck, futures.Future[AppendResult] | BrokerError] | None
        ] = queue.Queue(maxsize=MAX_PENDING_ACKS)
        failure: list[BrokerError] = []
        # The writer serves each client's batches in turn (walbroker.writequeue).
        client = client_identity(
            context.invocation_metadata() or (), context, self.broker.guard.access.enabled
        )

        def read() -> None:
            try:
                for req in request_iterator:
                    head = pb.PublishAck(
                        request_id=req.request_id, topic=req.topic, partition=req.partition
                    )
                    outcome = self._submit(req, client)
                    del req
                    if not _offer(pending, (head, outcome), context):
                        return  # the call is over: nobody reads the acks any more
                    if isinstance(outcome, ResourceExhausted) and outcome.retry_after_ms > 0:
                        self._hold_back(outcome.retry_after_ms, context)
            except grpc.RpcError:
                pass  # the client went away; acks for what was read are still produced
            except BrokerError as exc:  # a malformed frame: the stream ends with its status
                failure.append(exc)
            finally:
                _offer(pending, None, context)

        threading.Thread(target=read, name="publish-reader", daemon=True).start()
        while (item := pending.get()) is not None:
            head, outcome = item
            yield self._ack(head, outcome)
        if failure:
            abort(context, failure[0])

    def _hold_back(self, retry_after_ms: int, context: grpc.ServicerContext) -> None:
        """Read nothing more from this stream for the refusal's retry-after (at most 1 s).

        The queue or the disk is full, so the next batch would be refused too: without
        the pause a client that pipelines batches had every one of them received, decoded
        and dropped as fast as it could send (4 MiB batches on 12 streams: over 1 GB of
        churn). Unread, its batches wait in the client; gRPC's flow control holds it back.
        """
        wait = min(retry_after_ms / 1000, MAX_REFUSAL_PAUSE_S)
        deadline = time.monotonic() + wait
        while context.is_active() and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, _PAUSE_STEP_S))
        self.broker.metrics.publish_paused_seconds.inc(wait)

    def _submit(
        self, req: pb.PublishRequest, client: str
    ) -> futures.Future[AppendResult] | BrokerError:
        try:
            check_publish(req)
            tp = TopicPartition(req.topic, req.partition)
            fence = (
                Fence(req.fence_group, req.fence_epoch, req.progress) if req.fence_group else None
            )
            return self.wal.append(
                tp, req.payload, req.count, req.producer_id, req.sequence, fence, client
            )
        except BrokerError as exc:
            # Its traceback holds the request's frames (and payload) until the ack goes
            # out, which may wait behind earlier batches: drop it.
            return exc.with_traceback(None)

    def _ack(
        self, ack: pb.PublishAck, outcome: futures.Future[AppendResult] | BrokerError
    ) -> pb.PublishAck:
        try:
            if isinstance(outcome, BrokerError):
                raise outcome
            result = self.wal.wait(outcome, "publish")
        except BrokerError as exc:
            self.broker.metrics.rejected.labels(exc.code.name).inc()
            ack.status.CopyFrom(status_of(exc))
            return ack
        ack.status.CopyFrom(status_of(None))
        ack.base_offset, ack.count = result.base_offset, result.count
        ack.duplicate, ack.publish_time_ns = result.duplicate, result.publish_time_ns
        return ack

    def Consume(
        self, request_iterator: Iterator[pb.ConsumeRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ConsumeResponse]:
        b = self.broker
        session = Session(
            self.wal,
            b.coordinator,
            b.metrics,
            b.config.session_timeout_ms,
            b.config.max_unacked_points,
            b.config.max_consume_queue_bytes,
        )
        context.add_callback(session.close)
        try:
            first = next(request_iterator, None)
            if first is None or first.WhichOneof("kind") != "join":
                raise InvalidArgument("the first message of a Consume stream must be a join")
            session.join(first.join, peer_host(context.peer()))
            threading.Thread(
                target=self._read_session,
                args=(request_iterator, session),
                name="consume-reader",
                daemon=True,
            ).start()
            yield from session.responses()
            if session.failure is not None:
                raise session.failure
        except BrokerError as exc:
            if isinstance(exc, InvalidArgument):  # a bad join or request, counted as frames are
                b.metrics.invalid.labels("Consume").inc()
            abort(context, exc)
        finally:
            session.finish()

    @staticmethod
    def _read_session(requests: Iterator[pb.ConsumeRequest], session: Session) -> None:
        try:
            for req in requests:
                session.handle(req)
                if session.closed.is_set():
                    break
        except BrokerError as exc:
            session.fail(exc)
        except grpc.RpcError:
            pass  # stream ended by the client or the server; close below
        finally:
            session.close()

    def Metadata(
        self, request: pb.MetadataRequest, context: grpc.ServicerContext
    ) -> pb.MetadataResponse:
        try:
            return self._metadata(request)
        except BrokerError as exc:
            abort(context, exc)

    def _metadata(self, request: pb.MetadataRequest) -> pb.MetadataResponse:
        wal = self.wal
        if len(request.topics) > wal.config.max_topics:
            raise InvalidArgument(f"at most {wal.config.max_topics} topics per request")
        for name in request.topics:
            validate_name("topic", name)
        names = list(request.topics) or sorted(wal.topics)
        resp = pb.MetadataResponse(default_partitions=wal.config.default_partitions)
        resp.brokers.add(node_id=self.broker.config.node_id, address=self.broker.address)
        for name in names:
            t = resp.topics.add(name=name)
            for p in range(wal.partition_count(name)):
                info = wal.state(TopicPartition(name, p)).info()
                t.partitions.add(
                    partition=p,
                    leader=self.broker.config.node_id,
                    log_start_offset=info.log_start_offset,
                    log_end_offset=info.log_end_offset,
                )
        return resp


def _offer(pending: queue.Queue[Any], item: Any, context: grpc.ServicerContext) -> bool:
    """Put `item` on a Publish stream's ack queue; False once the call has ended.

    The queue is full when the client does not read its acks. If it then cancels, the
    stream's generator is gone and nobody takes from the queue again: a plain `put`
    left the reader thread blocked for good, one thread per such stream.
    """
    while True:
        try:
            pending.put(item, timeout=_PAUSE_STEP_S)
            return True
        except queue.Full:
            if not context.is_active():
                return False


def check_publish(req: pb.PublishRequest) -> None:
    """Validate a publish request's identifiers (the log checks the batch itself)."""
    validate_name("topic", req.topic)
    validate_identifier("producer_id", req.producer_id, MAX_PRODUCER_ID_BYTES)
    if req.fence_group:
        validate_name("fence_group", req.fence_group)
        if not req.producer_id:
            raise InvalidArgument("a fenced batch needs a producer_id")


class Broker:
    """The broker process: log, coordinator, gRPC server, health, metrics and the reaper loop."""

    def __init__(self, config: BrokerConfig, interceptors: list[Any] | None = None) -> None:
        self.config = config
        self.metrics = BrokerMetrics()
        self.wal = Log(config.log, self.metrics)
        self.coordinator = GroupCoordinator(self.wal, self.metrics, max_groups=config.max_groups)
        self.metrics.groups.set_function(self.coordinator.group_count)
        self.metrics.add_offsets_collector(self._extents, self._lags)
        self.health = health.HealthServicer()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self._metrics_server: ProbeServer | None = None
        # Set when a background loop cannot go on; the process then exits non-zero.
        self.fatal = threading.Event()
        self.port = 0
        sec = config.security
        self.guard = Guard.build(sec, self.metrics.registry)  # bad token/TLS file: refuse
        self.interceptors: list[grpc.ServerInterceptor] = (
            default_interceptors(config, self.metrics, self.guard)
            if interceptors is None
            else interceptors
        )
        workers = config.max_streams + config.reserved_workers
        connection_options = server_options(
            config.max_connections, config.connection_idle_timeout_s, config.handshake_timeout_s
        )
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
            interceptors=self.interceptors,
            # A backstop only: StreamLimits refuses streams well before this.
            maximum_concurrent_rpcs=workers + 4 * config.reserved_workers,
            options=[
                ("grpc.max_receive_message_length", config.grpc_max_message_bytes),
                ("grpc.max_send_message_length", config.grpc_max_message_bytes),
                ("grpc.so_reuseport", 0),
                # Fixed flow-control windows: with BDP probing on, gRPC grew each stream's
                # window under a flood of 4 MiB batches until the broker held 3 GB of
                # received bytes (docs/limits.md, "Memory under a publish flood").
                ("grpc.http2.bdp_probe", 0),
                *connection_options,
            ],
        )
        self.connections = ConnectionSampler(
            self.metrics, config.max_connections, lambda: self.port
        )
        pb_grpc.add_BrokerServicer_to_server(BrokerServicer(self), self.server)
        admin.add_to_server(self.server, self.wal, self.coordinator, self.metrics)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.extra_services: list[Any] = []

    @property
    def address(self) -> str:
        """The address clients should dial."""
        host = self.config.listen.rsplit(":", 1)[0]
        return self.config.advertised_address or f"{host}:{self.port}"

    def start(self) -> None:
        """Open for business: writer, configured topics, gRPC, metrics endpoint, reaper."""
        sec = self.config.security
        check_exposure("walbroker", self.config.listen, sec.authenticated, sec.tls, sec.insecure)
        ensure_fd_budget(self.config.max_connections)
        self.wal.start()
        for topic, partitions in self.config.topics:
            n = self.wal.create_topic(topic, partitions)
            if n != partitions:
                log.warning(
                    "configured topic exists with another partition count; kept as it is",
                    extra={"topic": topic, "partitions": n, "configured": partitions},
                )
        self.port = self.guard.bind(self.server, self.config.listen)
        if self.port == 0:
            raise OSError(
                f"--listen {self.config.listen}: cannot listen there (the port is in use, "
                "or the host is not an address of this machine): choose another --listen"
            )
        self.server.start()
        if self.config.metrics_listen:
            try:
                self._metrics_server = ProbeServer(
                    self.config.metrics_listen,
                    lambda: (not self._stop.is_set(), {}),
                    self.metrics.registry,
                    "broker-http",
                    metric_prefix="gpu_telemetry_broker_metrics",
                    max_connections=self.config.metrics_max_connections,
                    timeout_s=self.config.metrics_timeout_s,
                ).start()
            except OSError as exc:
                self.server.stop(0)
                raise OSError(
                    f"--metrics-listen {self.config.metrics_listen}: {exc.strerror or exc} "
                    "(choose another --metrics-listen, or '' to serve no /metrics)"
                ) from None
        self._reaper = threading.Thread(target=self._reap, name="group-reaper", daemon=True)
        self._reaper.start()
        log.info("loop started", extra={"loop": "group-reaper"})
        for service in ("", SERVICE_NAME, "walbroker.v1.Admin"):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "broker serving",
            extra={
                "listen": self.address,
                "metrics": self.config.metrics_listen,
                "tls": sec.tls,
                "auth": self.guard.access.enabled,
            },
        )

    def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new calls, let streams finish for `grace_s`, then close the log cleanly.

        Streams still open after the grace period are cancelled; `walbroker.cli`
        bounds the whole shutdown with a watchdog (`shutdown_timeout_s`).
        """
        self.health.enter_graceful_shutdown()
        self._stop.set()
        if not self.server.stop(grace_s).wait(grace_s + 2.0):
            log.warning("gRPC server did not stop in time", extra={"grace_s": grace_s})
        if self._reaper is not None:
            self._reaper.join(timeout=5.0)
            log.info("loop stopped", extra={"loop": "group-reaper"})
        if self._metrics_server is not None:
            self._metrics_server.stop()
        self.wal.close()
        log.info("broker stopped")

    def _reap(self) -> None:
        """The group-reaper loop: session timeouts, group retention, the writer's health."""
        # Group retention and the idle-group bound are checked a few times per bound.
        bounds = [self.config.group_retention_s, self.config.log.retention_ignore_idle_group_s]
        interval = max(0.5, min([b / 4 for b in bounds if b > 0] + [30.0]))
        next_retention = 0.0
        while not self._stop.wait(0.5):
            try:
                self.coordinator.expire()
                if time.monotonic() >= next_retention:
                    self._group_retention()
                    next_retention = time.monotonic() + interval
                self.metrics.disk_free.set(self.wal.disk.free_bytes())
                self.connections.sample()
            except Exception:  # the loop must not die silently; next turn retries
                log.exception("loop error", extra={"loop": "group-reaper"})
            if self.wal.writer.failed is not None:
                log.critical("log writer failed; stopping", extra={"error": self.wal.writer.failed})
                self.fatal.set()
                return

    def _group_retention(self) -> None:
        now = time.time_ns()
        c = self.config
        expire_groups(self.wal, self.coordinator, self.metrics, c.group_retention_s, now)
        bound = c.log.retention_ignore_idle_group_s
        update_retention_ignored(self.wal, self.coordinator, self.metrics, bound, now)

    def _extents(self) -> Iterable[ExtentRow]:
        for tp, state in list(self.wal.partitions.items()):
            info = state.info()
            yield tp.topic, tp.partition, info.log_start_offset, info.log_end_offset

    def _lags(self) -> Iterable[LagRow]:
        for r in group_lags(self.wal, self.coordinator):
            yield r.group, r.tp.topic, r.tp.partition, r.position, r.log_end_offset, r.lag_seconds
