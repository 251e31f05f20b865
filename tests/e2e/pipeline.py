"""The whole pipeline as real processes: broker, streamers, collectors, gateway, and a way to count.

Counting goes through the gateway's REST API, as a user would: every GPU, every
metric, every page.
"""

from __future__ import annotations

import json
import ssl
import sys
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import uuid4

from gputel.secure import SecureSetup
from proto.gen import walbroker_admin_pb2 as apb
from proto.gen import walbroker_admin_pb2_grpc as apb_grpc
from tests.fixtures.broker import BrokerProcess, free_port
from tests.fixtures.process import ManagedProcess
from tests.support import wait_until as wait_for
from tests.transport.backends import create_kafka_topic
from walbroker.client import channel
from walbroker.credentials import ClientSecurity

BIN = Path(sys.executable).parent
FAR_FUTURE = 4102444800  # 2100-01-01, Unix seconds


def http_get(
    url: str,
    timeout_s: float = 10.0,
    context: ssl.SSLContext | None = None,
    token: str | None = None,
) -> tuple[int, bytes]:
    """(status, body) of a GET, including error statuses; (0, b'') when unreachable."""
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


class Proc(ManagedProcess):
    """A pipeline component in a subprocess, with its log in a file and an HTTP health URL."""

    def __init__(
        self, name: str, argv: list[str], log_path: Path, health_url: str, port: int = 0
    ) -> None:
        super().__init__(argv, log_path)
        self.name, self.health_url = name, health_url
        self.port = port  # the HTTP port serving /metrics and the health URL (0: unknown)
        self.context: ssl.SSLContext | None = None  # HTTPS (the secure gateway)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def start(self, wait: bool = True) -> Proc:
        self.spawn()
        if wait and not wait_for(self.healthy, 30):
            raise TimeoutError(f"{self.name} not healthy; log:\n{self.log_tail()}")
        return self

    def healthy(self) -> bool:
        return http_get(self.health_url, 1, self.context)[0] == 200


class KafkaTarget:
    """A Kafka cluster (tests.kafka_cluster) as the pipeline's broker: `address` is its URL."""

    def __init__(self, cluster: Any, partitions: int = 8) -> None:
        self.cluster = cluster
        self.address = cluster.url
        self.topic = f"telemetry-{uuid4().hex[:8]}"  # the cluster is shared by tests
        replicas = cluster.nodes
        create_kafka_topic(cluster.bootstrap, self.topic, partitions, replicas)
        create_kafka_topic(cluster.bootstrap, f"{self.topic}.dlq", 2, replicas)
        self.partitions = partitions

    def args(self) -> list[str]:
        """Flags of every streamer and collector of this pipeline."""
        return ["--topic", self.topic]

    def lag(self, group: str) -> int | None:
        """Records of `topic` beyond the group's committed offsets (None if unknown)."""
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": self.cluster.bootstrap, "group.id": group})
        try:
            tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
            committed = c.committed(tps, timeout=10)
            ends = [c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
        except Exception:
            return None
        finally:
            c.close()
        return sum(end - max(tp.offset, 0) for tp, end in zip(committed, ends, strict=True))


class Pipeline:
    """A broker plus any number of streamers and collectors and one gateway, on one store."""

    def __init__(
        self,
        tmp: Path,
        broker: BrokerProcess | KafkaTarget,
        store_args: list[str],
        csv: Path,
        env_token: str = "",
        secure: SecureSetup | None = None,
    ) -> None:
        self.tmp, self.broker, self.store_args, self.csv = tmp, broker, store_args, csv
        # TLS and a token per component, made as `gputel-up --secure` makes them.
        self.secure = secure
        self.context = ssl.create_default_context(cafile=str(secure.ca)) if secure else None
        self.procs: list[Proc] = []
        self.gateway: Proc | None = None

    def _proc(self, name: str, argv: list[str], port: int, health: str) -> Proc:
        p = Proc(
            name,
            argv,
            self.tmp / f"{name}-{len(self.procs)}.log",
            f"http://127.0.0.1:{port}{health}",
            port,
        )
        self.procs.append(p)
        return p

    def streamer(self, *args: str) -> Proc:
        port = free_port()
        return self._proc(
            "streamer",
            [
                str(BIN / "gputel-streamer"),
                "--broker",
                self.broker.address,
                "--csv",
                str(self.csv),
                "--metrics-listen",
                f"127.0.0.1:{port}",
                *self._client("streamer"),
                *self._transport(),
                *args,
            ],
            port,
            "/healthz",
        )

    def _transport(self) -> list[str]:
        return self.broker.args() if isinstance(self.broker, KafkaTarget) else []

    def _client(self, principal: str) -> list[str]:
        return self.secure.client_args(principal) if self.secure else []

    def collector(self, *args: str) -> Proc:
        port = free_port()
        return self._proc(
            "collector",
            [
                str(BIN / "gputel-collector"),
                "--broker",
                self.broker.address,
                *self.store_args,
                "--flush-ms",
                "200",
                "--metrics-listen",
                f"127.0.0.1:{port}",
                *self._client("collector"),
                *self._transport(),
                *args,
            ],
            port,
            "/healthz",
        )

    def start_gateway(self) -> Proc:
        return self.gateway_proc().start()

    def gateway_proc(self) -> Proc:
        """The gateway, not started yet (its port is known, e.g. to configure a scraper)."""
        port = free_port()
        argv = [str(BIN / "gputel-gateway"), *self.store_args, "--bind", f"127.0.0.1:{port}"]
        if self.secure:
            argv += self.secure.gateway_args()
        self.gateway = self._proc("gateway", argv, port, "/healthz")
        if self.secure:
            self.gateway.health_url = self.gateway.health_url.replace("http:", "https:")
            self.gateway.context = self.context
        return self.gateway

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.terminate(15)

    # ---- what the user sees ---------------------------------------------------------------

    def api(self, path: str, **params: object) -> dict:
        assert self.gateway is not None
        query = urllib.parse.urlencode(params, doseq=True)
        token = self.secure.token("api").read_text().strip() if self.secure else None
        base = self.gateway.health_url.rsplit("/", 1)[0]
        status, body = http_get(f"{base}{path}?{query}", 30, self.context, token)
        assert status == 200, f"GET {path}: {status} {body[:300]!r}"
        return json.loads(body)

    def counts(self) -> Counter[tuple[str, str]]:
        """Points per (GPU uuid, metric), read page by page through the REST API."""
        uuids: list[str] = []
        cursor = None
        while True:
            page = self.api("/api/v1/gpus", limit=1000, **({"cursor": cursor} if cursor else {}))
            uuids += [g["uuid"] for g in page["gpus"]]
            if not (cursor := page.get("next_cursor")):
                break
        counts: Counter[tuple[str, str]] = Counter()
        for uuid in uuids:
            cursor = None
            while True:
                extra = {"cursor": cursor} if cursor else {}
                page = self.api(
                    f"/api/v1/gpus/{uuid}/telemetry",
                    start_time=0,
                    end_time=FAR_FUTURE,
                    limit=10000,
                    **extra,
                )
                counts.update((uuid, p["metric"]) for p in page["points"])
                if not (cursor := page.get("next_cursor")):
                    break
        return counts

    def lag(self, group: str = "collectors") -> int | None:
        """Total lag of a group in points, records on Kafka (None if the broker is unreachable)."""
        if isinstance(self.broker, KafkaTarget):
            return self.broker.lag(group)
        try:
            sec = None
            if self.secure:
                s = self.secure
                sec = ClientSecurity(s.token("admin"), s.ca, s.cert("admin"), s.key("admin"))
            with channel(self.broker.address, sec) as ch:
                resp = apb_grpc.AdminStub(ch).DescribeGroup(
                    apb.DescribeGroupRequest(group=group), timeout=5
                )
        except Exception:
            return None
        return sum(p.lag_points for p in resp.partitions)
