"""The gRPC adapter: translates Publish / Consume / Metadata to the log and the coordinator.

BrokerError becomes a status code here and nowhere else on the server side:
per-batch in `PublishAck.status`, per-commit in `CommitAck.status`, and for a
whole stream with `context.abort`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc
from walbroker.config import BrokerConfig
from walbroker.errors import BrokerError, Code, InvalidArgument, NotFound
from walbroker.group import GroupCoordinator
from walbroker.guard import Guard
from walbroker.lag import group_lags
from walbroker.log import Log
from walbroker.metrics import BrokerMetrics, ExtentRow, LagRow
from walbroker.security import check_exposure
from walbroker.session import Session, status_of
from walbroker.types import AppendResult, TopicPartition
from walbroker.writer import Fence

log = logging.getLogger(__name__)

SERVICE_NAME = "walbroker.v1.Broker"


def peer_host(peer: str) -> str:
    """The address of a gRPC peer without its port: 'ipv4:10.0.0.7:5312' -> '10.0.0.7'."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = rest.rpartition(":")[0] or rest
        return host.strip("[]")
    return rest or peer  # unix sockets and the like: the path, as given


def abort(context: grpc.ServicerContext, exc: BrokerError) -> None:
    """End the RPC with `exc`'s status code (and retry-after in trailing metadata)."""
    if exc.retry_after_ms:
        context.set_trailing_metadata((("retry-after-ms", str(exc.retry_after_ms)),))
    context.abort(grpc.StatusCode[Code(exc.code).name], exc.message)


class BrokerServicer(pb_grpc.BrokerServicer):  # type: ignore[misc]
    """The Broker service over one log and one coordinator."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.wal = broker.wal

    def Publish(
        self, request_iterator: Iterator[pb.PublishRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.PublishAck]:
        pending: queue.Queue[
            tuple[pb.PublishRequest, futures.Future[AppendResult] | BrokerError] | None
        ] = queue.Queue()

        def read() -> None:
            try:
                for req in request_iterator:
                    pending.put((req, self._submit(req)))
            except grpc.RpcError:
                pass  # the client went away; acks for what was read are still produced
            finally:
                pending.put(None)

        threading.Thread(target=read, name="publish-reader", daemon=True).start()
        while (item := pending.get()) is not None:
            req, outcome = item
            yield self._ack(req, outcome)

    def _submit(self, req: pb.PublishRequest) -> futures.Future[AppendResult] | BrokerError:
        try:
            tp = TopicPartition(req.topic, req.partition)
            fence = (
                Fence(req.fence_group, req.fence_epoch, req.progress) if req.fence_group else None
            )
            return self.wal.append(tp, req.payload, req.count, req.producer_id, req.sequence, fence)
        except BrokerError as exc:
            return exc

    def _ack(
        self, req: pb.PublishRequest, outcome: futures.Future[AppendResult] | BrokerError
    ) -> pb.PublishAck:
        ack = pb.PublishAck(request_id=req.request_id, topic=req.topic, partition=req.partition)
        try:
            if isinstance(outcome, BrokerError):
                raise outcome
            result = outcome.result()
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
        wal = self.wal
        names = list(request.topics) or sorted(wal.topics)
        resp = pb.MetadataResponse(default_partitions=wal.config.default_partitions)
        resp.brokers.add(node_id=self.broker.config.node_id, address=self.broker.address)
        for name in names:
            if name not in wal.topics:
                abort(context, NotFound(f"unknown topic {name!r}"))
            t = resp.topics.add(name=name)
            for p in range(wal.topics[name]):
                info = wal.state(TopicPartition(name, p)).info()
                t.partitions.add(
                    partition=p,
                    leader=self.broker.config.node_id,
                    log_start_offset=info.log_start_offset,
                    log_end_offset=info.log_end_offset,
                )
        return resp


class Broker:
    """The broker process: log, coordinator, gRPC server, health, metrics and the reaper loop."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.metrics = BrokerMetrics()
        self.wal = Log(config.log, self.metrics)
        self.coordinator = GroupCoordinator(self.wal, self.metrics)
        self.wal.epoch_of = self.coordinator.epoch_of
        self.metrics.add_offsets_collector(self._extents, self._lags)
        self.health = health.HealthServicer()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self._metrics_server: Any = None
        self.port = 0
        sec = config.security
        self.guard = Guard.build(sec, self.metrics.registry)  # bad token/TLS file: refuse
        # Applied in order; authentication first, so nothing else runs for a stranger.
        self.interceptors: list[grpc.ServerInterceptor] = [self.guard.interceptor]
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.grpc_workers, thread_name_prefix="grpc"),
            maximum_concurrent_rpcs=config.grpc_workers - 4,
            interceptors=self.interceptors,
            options=[
                ("grpc.max_receive_message_length", config.grpc_max_message_bytes),
                ("grpc.max_send_message_length", config.grpc_max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_BrokerServicer_to_server(BrokerServicer(self), self.server)
        from walbroker import admin  # here: admin imports `abort` from this module

        admin.add_to_server(self.server, self.wal, self.coordinator, self.metrics)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.extra_services: list[Any] = []

    @property
    def address(self) -> str:
        """The address clients should dial."""
        host = self.config.listen.rsplit(":", 1)[0]
        return self.config.advertised_address or f"{host}:{self.port}"

    def start(self) -> None:
        """Open for business: writer, gRPC, metrics endpoint, session reaper."""
        sec = self.config.security
        check_exposure("walbroker", self.config.listen, sec.authenticated, sec.tls, sec.insecure)
        self.wal.start()
        self.port = self.guard.bind(self.server, self.config.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        self.server.start()
        if self.config.metrics_listen:
            host, port = self.config.metrics_listen.rsplit(":", 1)
            self._metrics_server, _ = start_http_server(
                int(port), host, registry=self.metrics.registry
            )
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
        """Refuse new calls, let streams finish for `grace_s`, then close the log cleanly."""
        self.health.enter_graceful_shutdown()
        self._stop.set()
        self.server.stop(grace_s).wait()
        if self._reaper is not None:
            self._reaper.join()
            log.info("loop stopped", extra={"loop": "group-reaper"})
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        self.wal.close()
        log.info("broker stopped")

    def _reap(self) -> None:
        while not self._stop.wait(0.5):
            self.coordinator.expire()

    def _extents(self) -> Iterable[ExtentRow]:
        for tp, state in list(self.wal.partitions.items()):
            info = state.info()
            yield tp.topic, tp.partition, info.log_start_offset, info.log_end_offset

    def _lags(self) -> Iterable[LagRow]:
        for r in group_lags(self.wal, self.coordinator):
            yield r.group, r.tp.topic, r.tp.partition, r.position, r.log_end_offset, r.lag_seconds
