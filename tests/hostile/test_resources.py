"""Disk: a free-space watermark, and a clear start-up error when the log cannot fit."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from proto.gen import walbroker_pb2 as pb
from tests.fixtures.broker import BrokerProcess
from tests.hostile.support import GoodClient, assert_unaffected
from tests.hostile.test_requests import publish
from walbroker.errors import Code

MiB = 1024 * 1024
CHART_MEMORY_LIMIT = 1024 * MiB  # chart/values.yaml: broker.resources.limits.memory 1Gi


@pytest.fixture
def small_volume(tmp_path: Path):
    """A tmpfs of its own (size set by the test), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root (CI runs as root)")
    mounted: list[Path] = []

    def mount(size_mib: int) -> Path:
        path = tmp_path / f"vol{len(mounted)}"
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
                       check=True)  # fmt: skip
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_a_nearly_full_disk_is_resource_exhausted_before_the_file_system_fills(small_volume):
    """A full disk once answered UNAVAILABLE "No space left on device"."""
    vol = small_volume(400)
    limits = ["--retention-bytes", str(150 * MiB), "--min-free-bytes", str(64 * MiB)]
    broker = BrokerProcess(vol / "broker", "--topic", "good:8", "--topic", "fill:2", *limits)
    broker.log_path = vol.parent / "disk-broker.log"
    broker.start()
    try:
        good = GoodClient(broker.address)
        baseline = good.baseline(1.0)
        with open(vol / "hog", "wb") as hog:  # someone else fills the volume
            hog.write(b"\0" * (_free(vol) - 96 * MiB))
        payload = os.urandom(MiB)
        acked, refusal = 0, None
        for i in range(200):
            req = pb.PublishRequest(
                request_id=i, topic="fill", partition=i % 2, payload=payload, count=1000
            )
            (ack,) = publish(broker.address, req)
            if ack.status.code != Code.OK:
                refusal = ack.status
                break
            acked += 1
        assert refusal is not None and refusal.code == Code.RESOURCE_EXHAUSTED, refusal
        assert "disk nearly full" in refusal.message and refusal.retry_after_ms >= 1000
        assert _free(vol) > 16 * MiB, "the watermark came too late"
        (vol / "hog").unlink()
        time.sleep(1.5)  # the free-space reading is refreshed every second
        assert_unaffected(baseline, lambda: good.publish_for(1.0))
        good.assert_nothing_lost()
        assert acked > 0
    finally:
        broker.stop()


def test_a_map_larger_than_the_volume_is_a_clear_start_up_error(small_volume):
    vol = small_volume(64)
    broker = BrokerProcess(vol / "broker", "--retention-bytes", str(1024 * MiB))
    broker.log_path = vol.parent / "map-broker.log"
    broker.start(wait=False)
    assert broker.wait(30) == 1
    assert "exceeds the volume of the data directory" in broker.log_text()
    assert "lower --retention-bytes" in broker.log_text()
