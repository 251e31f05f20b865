"""The container image, run for real (make image-test builds it first with scripts/image.sh build).

Broker, collector, gateway and a streamer each run as a container of the one image, the way the
chart runs them: as the image's non-root user, read-only root file system, a writable /tmp only,
every capability dropped, no privilege escalation. --network host on loopback ports (the only
network allowed on the CI machines). Points must arrive through the gateway's REST API.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.pipeline import http_get
from tests.fixtures.broker import free_port
from tests.support import wait_until

DOCKER = os.environ.get("DOCKER", "docker")
IMAGE = os.environ.get("GPUTEL_IMAGE", "gputel:0.1.0")
UID = 10001  # the Dockerfile's USER
HARDENED = [
    "--network=host",
    "--read-only",
    "--tmpfs=/tmp:size=64m",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
]


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {proc.stdout}{proc.stderr}")
    return proc


class Pipeline:
    """Four containers on loopback ports; removed at the end (their logs printed first)."""

    def __init__(self, data: Path) -> None:
        self.tag = secrets.token_hex(3)
        self.data = data
        self.ports = {k: free_port() for k in ("broker", "broker_m", "coll_m", "gw", "str_m")}
        self.names: dict[str, str] = {}

    def run(self, component: str, *argv: str, volume: str | None = None) -> None:
        name = f"gputel-it-{component}-{self.tag}"
        mount = ["-v", f"{self.data / volume}:/var/lib/gputel/{volume}"] if volume else []
        docker("run", "-d", "--name", name, *HARDENED, *mount, IMAGE, *argv)
        self.names[component] = name

    def start(self) -> None:
        p, broker = self.ports, f"127.0.0.1:{self.ports['broker']}"
        db = "sqlite:/var/lib/gputel/store/gputel.db"
        for volume in ("broker", "store"):
            (self.data / volume).mkdir()
            os.chown(self.data / volume, UID, UID)  # the container user owns its volumes only
        broker_args = ["--data-dir", "/var/lib/gputel/broker", "--listen", broker]
        broker_args += ["--metrics-listen", f"127.0.0.1:{p['broker_m']}"]
        # Topic auto-creation is off: the broker creates the pipeline's topics at start.
        broker_args += ["--topic", "telemetry:16", "--topic", "telemetry.dlq:4"]
        self.run("broker", "walbroker", "serve", *broker_args, volume="broker")
        collector_args = ["--broker", broker, "--group", "collectors", "--store", db]
        collector_args += ["--metrics-listen", f"127.0.0.1:{p['coll_m']}"]
        self.run("collector", "gputel-collector", *collector_args, volume="store")
        gateway_args = ["--store", db, "--bind", f"127.0.0.1:{p['gw']}"]
        self.run("gateway", "gputel-gateway", *gateway_args, volume="store")
        streamer_args = ["--broker", broker, "--csv", "/data/dcgm.csv", "--forever"]
        streamer_args += ["--pass-interval", "1", "--metrics-listen", f"127.0.0.1:{p['str_m']}"]
        self.run("streamer", "gputel-streamer", *streamer_args)

    def logs(self) -> str:
        out = []
        for component, name in self.names.items():
            proc = docker("logs", "--tail", "30", name, check=False)
            out.append(f"--- {component}\n{proc.stdout}{proc.stderr}")
        return "\n".join(out)

    def remove(self) -> None:
        for name in self.names.values():
            docker("rm", "-f", name, check=False)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    if shutil.which(DOCKER) is None or docker("image", "inspect", IMAGE, check=False).returncode:
        pytest.fail(f"image {IMAGE} missing: run `make image-test` (it builds the image first)")
    data = tmp_path_factory.mktemp("image")
    data.chmod(0o755)
    p = Pipeline(data)
    try:
        p.start()
        yield p
    finally:
        print(p.logs())
        p.remove()


def gpus(api: str) -> list[dict[str, object]]:
    status, body = http_get(f"{api}/api/v1/gpus")
    return json.loads(body)["gpus"] if status == 200 else []


def test_points_arrive_through_the_gateway(pipeline: Pipeline) -> None:
    api = f"http://127.0.0.1:{pipeline.ports['gw']}"
    assert wait_until(lambda: len(gpus(api)) == 255, 120), pipeline.logs()
    uuid = gpus(api)[0]["uuid"]
    url = f"{api}/api/v1/gpus/{uuid}/telemetry?metric=DCGM_FI_DEV_GPU_UTIL&limit=5"

    def points() -> list[dict[str, object]]:
        status, body = http_get(url)
        assert status == 200, body
        found: list[dict[str, object]] = json.loads(body)["points"]
        return found

    # One point per streamer pass (every second): several passes arrive, in order.
    assert wait_until(lambda: len(points()) >= 3, 60), points()
    times = [p["time"] for p in points()]
    assert times == sorted(times) and len(set(times)) == len(times), times
    for port in ("broker_m", "coll_m", "str_m"):
        status, _ = http_get(f"http://127.0.0.1:{pipeline.ports[port]}/healthz")
        assert status == 200, (port, pipeline.logs())
    assert http_get(f"{api}/readyz")[0] == 200


def test_every_process_runs_as_the_non_root_user(pipeline: Pipeline) -> None:
    for component, name in pipeline.names.items():
        top = docker("top", name, "-o", "pid,uid,args").stdout.splitlines()[1:]
        assert top, component
        for line in top:
            uid = line.split()[1]
            assert uid == str(UID), (component, line)
        assert any("tini" in line for line in top), (component, top)  # PID 1 reaps, forwards TERM


def test_the_root_file_system_is_read_only(pipeline: Pipeline) -> None:
    for component, name in pipeline.names.items():
        # As root inside the container, so only the read-only mount can refuse the write.
        proc = docker("exec", "-u", "0", name, "touch", "/opt/gputel/written", check=False)
        assert proc.returncode != 0 and "Read-only file system" in proc.stderr, (component, proc)
        writable = docker("exec", name, "touch", "/tmp/written", check=False)
        assert writable.returncode == 0, (component, writable.stderr)


def test_the_broker_log_is_on_its_volume(pipeline: Pipeline) -> None:
    files = list((pipeline.data / "broker").rglob("*"))
    assert files, "the broker wrote nothing to its volume"
    assert all(f.stat().st_uid == UID for f in files), [(f, f.stat().st_uid) for f in files]
