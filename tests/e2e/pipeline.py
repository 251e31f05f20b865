"""The whole pipeline as real processes: broker, streamers, collectors, gateway, and a way to count.

Counting goes through the gateway's REST API, as a user would: every GPU, every
metric, every page.
"""

from __future__ import annotations

import json
import sys
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

from proto.gen import walbroker_admin_pb2 as apb
from proto.gen import walbroker_admin_pb2_grpc as apb_grpc
from tests.fixtures.broker import BrokerProcess, free_port
from tests.fixtures.process import ManagedProcess
from tests.support import wait_until as wait_for
from walbroker.client import channel

BIN = Path(sys.executable).parent
FAR_FUTURE = 4102444800  # 2100-01-01, Unix seconds


def http_get(url: str, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """(status, body) of a GET, including error statuses; (0, b'') when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
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

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def start(self, wait: bool = True) -> Proc:
        self.spawn()
        if wait and not wait_for(self.healthy, 30):
            raise TimeoutError(f"{self.name} not healthy; log:\n{self.log_tail()}")
        return self

    def healthy(self) -> bool:
        return http_get(self.health_url, 1)[0] == 200


class Pipeline:
    """A broker plus any number of streamers and collectors and one gateway, on one store."""

    def __init__(
        self,
        tmp: Path,
        broker: BrokerProcess,
        store_args: list[str],
        csv: Path,
        env_token: str = "",
    ) -> None:
        self.tmp, self.broker, self.store_args, self.csv = tmp, broker, store_args, csv
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
                *args,
            ],
            port,
            "/healthz",
        )

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
        self.gateway = self._proc(
            "gateway",
            [str(BIN / "gputel-gateway"), *self.store_args, "--bind", f"127.0.0.1:{port}"],
            port,
            "/healthz",
        )
        return self.gateway

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.terminate(15)

    # ---- what the user sees ---------------------------------------------------------------

    def api(self, path: str, **params: object) -> dict:
        assert self.gateway is not None
        query = urllib.parse.urlencode(params, doseq=True)
        status, body = http_get(f"{self.gateway.health_url.rsplit('/', 1)[0]}{path}?{query}", 30)
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
        """Total lag of a group in points (None if the broker is unreachable)."""
        try:
            with channel(self.broker.address) as ch:
                resp = apb_grpc.AdminStub(ch).DescribeGroup(
                    apb.DescribeGroupRequest(group=group), timeout=5
                )
        except Exception:
            return None
        return sum(p.lag_points for p in resp.partitions)
