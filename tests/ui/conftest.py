"""Web view fixtures: a real broker with a topic and a lagging consumer group, a SQLite store
with a day of data ending now, a real gunicorn gateway on both, and a real headless chromium.

Chromium and chromedriver are Debian's (scripts/chromium.sh, run by `make test`); selenium is
pointed at them explicitly, so it never looks for a driver on the network.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from gateway.config import GatewayConfig
from proto.batch import Gpu, PointBatch
from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc
from store import open_store
from tests.fixtures.broker import BrokerProcess
from tests.gateway.conftest import Gateway
from tests.walbroker.helpers import drain, encode
from walbroker.client import channel
from walbroker.consumer import Consumer
from walbroker.errors import Code

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TOPIC, GROUP = "telemetry", "collectors"
UTIL, TEMP, POWER = "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE"
METRICS = (POWER, TEMP, UTIL)
H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"
GPUS = (
    *(
        Gpu(f"GPU-{h}{i}-ui", f"dgx-h100-00{h}", i, f"nvidia{i}", H100)
        for h in (1, 2)
        for i in (0, 1)
    ),
    Gpu("GPU-a0-ui", "dgx-a100-001", 0, "nvidia0", A100),
)
STEP_S, SPAN_S = 30, 25 * 3600  # a point every 30 s for 25 hours, the newest one a minute ago
S = 1_000_000_000


def value(gi: int, metric: str, k: int) -> float:
    """A distinct, plottable value for GPU `gi`, `metric`, the k-th time step."""
    base = {UTIL: 10.0 * gi, TEMP: 30.0 + gi, POWER: 100.0 + 20 * gi}[metric]
    return base + (k % 60)


def seed(path: Path, now_ns: int) -> None:
    times = [now_ns - 60 * S - k * STEP_S * S for k in range(SPAN_S // STEP_S)]
    with open_store(f"sqlite:{path}") as store:
        for chunk in range(0, len(times), 500):
            batch = PointBatch(gpus=list(GPUS), metrics=list(METRICS))
            for k, t in enumerate(times[chunk : chunk + 500], start=chunk):
                for gi in range(len(GPUS)):
                    for mi, metric in enumerate(METRICS):
                        batch.gpu_index.append(gi)
                        batch.metric_index.append(mi)
                        batch.time_ns.append(t)
                        batch.value.append(value(gi, metric, k))
                        batch.source_time_ns.append(t - 2 * S)
            store.write(batch)


def publish(address: str, per_partition: int) -> None:
    reqs = [
        pb.PublishRequest(
            request_id=p,
            topic=TOPIC,
            partition=p,
            count=per_partition,
            payload=encode(list(range(per_partition))),
        )
        for p in range(4)
    ]
    with channel(address) as ch:
        acks = list(pb_grpc.BrokerStub(ch).Publish(iter(reqs), timeout=10))
    assert all(a.status.code == Code.OK for a in acks)


@dataclass
class Web:
    """The live gateway and what it shows."""

    url: str
    broker: BrokerProcess
    gateway: Gateway
    config: GatewayConfig
    folder: Path


@pytest.fixture(scope="module")
def web(tmp_path_factory) -> Iterator[Web]:
    folder = tmp_path_factory.mktemp("web")
    broker = BrokerProcess(folder / "broker", "--topic", f"{TOPIC}:4").start()
    member = None
    try:
        publish(broker.address, 10)
        drain(broker.address, TOPIC, 40, group=GROUP)  # committed: 10 per partition
        publish(broker.address, 5)  # lag: 5 per partition
        # A live member that holds its records without committing: lag stays, HOST shows.
        member = Consumer(broker.address, GROUP, TOPIC, client_id="ui-test-collector").start()
        seed(folder / "telemetry.db", time.time_ns())
        config = GatewayConfig(store=f"sqlite:{folder / 'telemetry.db'}", broker=broker.address)
        gateway = Gateway(config, folder / "gateway.log", workers=2, threads=4)
        try:
            yield Web(gateway.url, broker, gateway, config, folder)
        finally:
            gateway.stop()
    finally:
        if member is not None:
            member.close()
        broker.stop(5)


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """A headless chromium with a fresh profile, logging the console and the network."""
    for tool in ("chromium", "chromedriver"):
        assert shutil.which(tool), f"{tool} missing: run scripts/chromium.sh (make test does)"
    profile = tempfile.mkdtemp(prefix="gputel-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or ""
    for arg in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions", "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
