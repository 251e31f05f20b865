"""Helpers for streaming tests: small DCGM CSVs, `gputel-streamer` subprocesses, reading the log."""

from __future__ import annotations

import sys
import time
import urllib.request
import uuid as uuidlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from proto.batch import Point
from proto.codec import decode
from proto.gen import walbroker_admin_pb2 as apb
from proto.gen import walbroker_admin_pb2_grpc as apb_grpc
from tests.fixtures.process import ManagedProcess
from tests.streamer.dcgm_fixture import csv_text, labels_raw, row
from walbroker.client import channel
from walbroker.consumer import Consumer

STREAMER = str(Path(sys.executable).with_name("gputel-streamer"))
START = 1_752_871_350  # 2025-07-18T20:42:30Z


def uuid_of(i: int) -> str:
    return f"GPU-{i:08d}-0000-4000-8000-{i:012d}"


def make_csv(path: Path, gpus: int, metrics: int, scrapes: int = 1) -> Path:
    """Write a CSV of `gpus` GPUs (4 per host, gpu_id repeating) x `metrics` x `scrapes`."""
    rows = []
    for s in range(scrapes):
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(START + 30 * s))
        for i in range(gpus):
            host, gpu = f"h{i // 4}", str(i % 4)
            for m in range(metrics):
                rows.append(
                    row(
                        timestamp=ts, metric_name=f"DCGM_FI_DEV_M{m}", gpu_id=gpu, uuid=uuid_of(i),
                        Hostname=host, device=f"nvidia{gpu}", value=str(s * 100 + m),
                        labels_raw=labels_raw(uuid_of(i), host, gpu),
                    )
                )  # fmt: skip
    path.write_text(csv_text(rows), encoding="utf-8")
    return path


@dataclass(frozen=True)
class Logged:
    """A point as read back from the log, with where it was."""

    partition: int
    offset: int
    point: Point


def read_log(address: str, topic: str, expected: int, timeout_s: float = 20.0) -> list[Logged]:
    """Read `topic` from the earliest offset until `expected` points (a bit more, if any)."""
    out: list[Logged] = []
    group = f"verify-{uuidlib.uuid4().hex[:8]}"
    c = Consumer(address, group, topic, max_unacked_points=500_000).start()
    try:
        deadline = time.monotonic() + timeout_s
        quiet_until = 0.0
        while time.monotonic() < deadline:
            msgs = c.poll(0.2)
            for m in msgs:
                points = list(decode(m.payload).points())
                assert len(points) == m.count, "payload and count disagree"
                for k, p in enumerate(points[m.skip :], start=m.base_offset + m.skip):
                    out.append(Logged(m.partition, k, p))
            c.commit()
            if len(out) >= expected:
                # keep reading briefly: a duplicate would arrive after the expected count
                quiet_until = quiet_until or time.monotonic() + 0.5
                if time.monotonic() >= quiet_until:
                    break
    finally:
        c.close()
    return out


def read_records(address: str, topic: str, expected: int) -> dict[int, list[int]]:
    """The point count of each record (= published batch) per partition, in log order."""
    counts: dict[int, list[int]] = {}
    group = f"verify-{uuidlib.uuid4().hex[:8]}"
    c = Consumer(address, group, topic, max_unacked_points=500_000).start()
    try:
        deadline, seen = time.monotonic() + 20, 0
        while seen < expected and time.monotonic() < deadline:
            for m in c.poll(0.2):
                assert len(decode(m.payload)) == m.count, "payload and count disagree"
                counts.setdefault(m.partition, []).append(m.count)
                seen += m.count
            c.commit()
    finally:
        c.close()
    return counts


def series_counts(points: list[Logged]) -> Counter[tuple[str, str, int]]:
    """How often each (uuid, metric, source_time) appears: once per pass when nothing repeats."""
    return Counter((p.point.gpu.uuid, p.point.metric, p.point.source_time_ns) for p in points)


def describe_group(address: str, group: str) -> list[apb.PartitionLag]:
    """The group's partitions (owner, committed); [] while the group is unknown."""
    with channel(address) as ch:
        try:
            stub = apb_grpc.AdminStub(ch)
            resp = stub.DescribeGroup(apb.DescribeGroupRequest(group=group), timeout=5)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                return []
            raise
    return list(resp.partitions)


def committed(address: str, group: str, topic: str) -> dict[int, int]:
    """Committed progress per partition of `topic` in `group`."""
    return {p.partition: p.committed_offset for p in describe_group(address, group)}


def owners(address: str, group: str) -> dict[int, str]:
    """The member owning each partition now ('' for none)."""
    return {p.partition: p.owner for p in describe_group(address, group)}


class StreamerProcess(ManagedProcess):
    """A `gputel-streamer` subprocess; its output goes to a file."""

    def __init__(self, tmp: Path, name: str, *args: str) -> None:
        super().__init__([STREAMER, "--metrics-listen", "", *args], tmp / f"{name}.log")
        self.spawn()


def metric_value(port: int, name: str, **labels: str) -> float:
    """A sample of the streamer's /metrics; -1 when absent or not served (yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return -1.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return -1.0
