"""Helpers for collector tests: a known data set to publish, collector processes, checks."""

from __future__ import annotations

import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from proto.batch import Gpu
from proto.codec import BatchBuilder, encode
from proto.gen import walbroker_admin_pb2 as apb
from proto.gen import walbroker_admin_pb2_grpc as apb_grpc
from store import Store, open_store
from tests.fixtures.broker import free_port
from tests.fixtures.influx import InfluxConn
from tests.fixtures.process import ManagedProcess
from tests.support import wait_until as wait_for
from walbroker.client import channel
from walbroker.credentials import ClientSecurity
from walbroker.producer import Producer

TOPIC = "telemetry"
GROUP = "collectors"
T0 = 1_700_000_000_000_000_000
METRICS = ["DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE"]

Item = tuple[Gpu, str, int, float]


def encode_items(items: list[Item]) -> bytes:
    """Encode producer items (gpu, metric, time_ns, value) as one telemetry batch."""
    b = BatchBuilder()
    for gpu, metric, t, v in items:
        b.add(gpu, metric, t, v, t - 5)
    return encode(b.build())


def make_gpus(hosts: int, per_host: int = 8, tag: str = "") -> list[Gpu]:
    """GPUs of `hosts` hosts; host-local indexes repeat on every host, uuids do not."""
    return [
        Gpu(uuid=f"GPU-{tag}{h:02d}-{i}", hostname=f"host-{h:02d}", gpu=i, device=f"nvidia{i}",
            model="NVIDIA H100 80GB HBM3")
        for h in range(hosts) for i in range(per_host)
    ]  # fmt: skip


@dataclass
class Telemetry:
    """A deterministic data set: every tick, one point per GPU and metric, keyed by GPU uuid."""

    address: str
    gpus: list[Gpu] = field(default_factory=lambda: make_gpus(4))
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    batch_size: int = 200
    ticks_sent: int = 0
    security: ClientSecurity | None = None

    def publish(self, ticks: Iterable[int], pace_s: float = 0.0) -> None:
        """Publish the given ticks (acknowledged by the broker when this returns)."""
        with Producer(
            self.address,
            TOPIC,
            encode_items,
            batch_size=self.batch_size,
            linger_ms=10,
            security=self.security,
        ).start() as p:
            for tick in ticks:
                t = T0 + tick * 1_000_000_000
                for g in self.gpus:
                    for m in self.metrics:
                        p.send(g.uuid, (g, m, t, float(tick % 97) + 0.25))
                self.ticks_sent += 1
                if pace_s:
                    time.sleep(pace_s)

    def in_background(self, ticks: Iterable[int], pace_s: float) -> Callable[[], None]:
        """Publish in a thread; returns a join() that re-raises the thread's error."""
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self.publish(ticks, pace_s)
            except BaseException as exc:
                errors.append(exc)

        t = threading.Thread(target=run, name="test-publisher", daemon=True)
        t.start()

        def join() -> None:
            t.join(timeout=120)
            assert not t.is_alive(), "publisher did not finish"
            if errors:
                raise errors[0]

        return join

    def expected(self) -> dict[tuple[str, str], int]:
        """The exact count per (uuid, metric) of what was published."""
        return {(g.uuid, m): self.ticks_sent for g in self.gpus for m in self.metrics}


@dataclass
class StoreTarget:
    """Where collectors write: the CLI flags and env, and how the test opens it to check."""

    name: str
    args: list[str]
    env: dict[str, str]
    opts: dict[str, str]

    @classmethod
    def sqlite(cls, path: Path) -> StoreTarget:
        return cls("sqlite", ["--store", f"sqlite:{path}"], {}, {"spec": f"sqlite:{path}"})

    @classmethod
    def influx(cls, conn: InfluxConn) -> StoreTarget:
        args = ["--store", "influx", "--influx-url", conn.url, "--influx-org", conn.org]
        args += ["--influx-bucket", conn.bucket]
        opts = {"spec": "influx", **conn.store_opts()}
        return cls("influx", args, {"GPUTEL_INFLUX_TOKEN": conn.token}, opts)

    def open(self) -> Store:
        opts = dict(self.opts)
        return open_store(opts.pop("spec"), **opts)


class CollectorProcess(ManagedProcess):
    """`gputel-collector` in a subprocess with its /metrics, /healthz and /readyz on a free port."""

    def __init__(self, broker: str, target: StoreTarget, log_path: Path, *extra: str) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "collector.cli", "--broker", broker, *target.args]
        cmd += ["--metrics-listen", f"127.0.0.1:{self.port}", "--session-timeout-ms", "3000"]
        cmd += ["--batch-size", "1000", "--flush-ms", "200", *extra]
        super().__init__(cmd, log_path)
        self.spawn(target.env)

    def get(self, path: str) -> tuple[int, str]:
        """GET a path of the metrics port: (status, body); (0, '') when not answering."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()
        except OSError:
            return 0, ""

    def metric(self, name: str) -> float:
        """Sum of a metric's samples (all label values) on /metrics."""
        _, body = self.get("/metrics")
        total = 0.0
        for line in body.splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        assert wait_for(lambda: self.get("/readyz")[0] == 200, timeout_s), self.log()

    def log(self) -> str:
        return self.log_text()


def wait_exact(store: Store, expected: dict[tuple[str, str], int], timeout_s: float = 60.0):
    """Wait until the store holds exactly `expected` per (uuid, metric); return the counts."""
    counts: dict[tuple[str, str], int] = {}

    def exact() -> bool:
        nonlocal counts
        counts = store.count_points()
        return counts == expected

    wait_for(exact, timeout_s, 0.5)
    return counts


def lag(address: str, group: str = GROUP, security: ClientSecurity | None = None) -> dict[int, int]:
    """Per partition of the group's topic, log end offset minus committed offset."""
    with channel(address, security) as ch:
        resp = apb_grpc.AdminStub(ch).DescribeGroup(
            apb.DescribeGroupRequest(group=group), timeout=5
        )
    return {p.partition: p.lag_points for p in resp.partitions}
