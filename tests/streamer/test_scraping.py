"""Scrape mode against fake dcgm-exporters in their own processes and a real broker.

Each scrape of a target is 8 GPUs x 10 fields sharing one timestamp, so "every scrape
stored once" is checked as: every (uuid, metric, time) appears once in the log, and every
stored scrape (host, time) is complete (80 points).
"""

from __future__ import annotations

import contextlib
import http.server
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path

import pytest

from proto.batch import PointBatch
from proto.codec import decode
from store.schema import check_batch
from tests.fixtures.broker import free_port
from tests.fixtures.process import ManagedProcess
from tests.streamer.streaming import committed, metric_value, owners, read_log, read_records
from tests.support import wait_until
from walbroker.consumer import Consumer

EXPORTER = str(Path(sys.executable).with_name("gputel-fake-exporter"))
INTERVAL_S, TIMEOUT_S = 1.0, 0.5


class Exporter(ManagedProcess):
    """`gputel-fake-exporter` serving `targets` nodes; its file_sd groups once it listens."""

    def __init__(self, tmp: Path, name: str, targets: int) -> None:
        self.name, self.sd = name, tmp / f"{name}.json"
        super().__init__(
            [EXPORTER, "--listen", "127.0.0.1:0", "--targets", str(targets),
             "--prefix", name, "--targets-file", str(self.sd)],
            tmp / f"{name}.log",
        )  # fmt: skip
        self.spawn()
        assert wait_until(self.sd.exists, 15), self.log_text()
        self.groups = json.loads(self.sd.read_text())

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)


@pytest.fixture
def exporters(tmp_path):
    made: list[Exporter] = []

    def make(name: str, targets: int) -> Exporter:
        e = Exporter(tmp_path, name, targets)
        made.append(e)
        return e

    yield make
    for e in made:
        if e.running:
            e.signal(signal.SIGCONT)
        e.kill()


def write_sd(path: Path, groups: list) -> Path:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups))
    os.replace(tmp, path)  # atomic, as a config reloader writes it
    return path


def scrape_args(broker, sd: Path, *extra: str) -> list[str]:
    return ["--broker", broker.address, "--targets-file", str(sd),
            "--scrape-interval-s", str(INTERVAL_S), "--scrape-timeout-s", str(TIMEOUT_S),
            *extra]  # fmt: skip


def logged_scrapes(broker) -> tuple[dict[tuple[str, int], int], list]:
    """Points per stored scrape (host, time) and every logged point; duplicates asserted away."""
    total = sum(committed(broker.address, "streamers", "telemetry").values())
    logged = read_log(broker.address, "telemetry", total)
    assert len(logged) == total
    keys = Counter((e.point.gpu.uuid, e.point.metric, e.point.time_ns) for e in logged)
    assert set(keys.values()) == {1}, "a scrape stored twice"
    scrapes: dict[tuple[str, int], int] = Counter(
        (e.point.gpu.hostname, e.point.time_ns) for e in logged
    )
    assert all(e.point.time_ns == e.point.source_time_ns for e in logged)
    return scrapes, logged


def times_by_host(scrapes: dict[tuple[str, int], int]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for host, t in scrapes:
        out[host].append(t / 1e9)
    return {h: sorted(ts) for h, ts in out.items()}


def test_many_exporters_one_killed_one_hanging_the_others_keep_their_rhythm(
    broker, streamer_process, exporters, tmp_path
):
    procs = [exporters(f"x{i}", 3) for i in range(4)]  # 12 targets, 96 GPUs
    sd = write_sd(tmp_path / "targets.json", [g for e in procs for g in e.groups])
    port = free_port()
    s = streamer_process(*scrape_args(broker, sd), "--metrics-listen", f"127.0.0.1:{port}")
    time.sleep(3.5)
    dead, hung = procs[0], procs[1]
    dead.kill()
    hung.signal(signal.SIGSTOP)
    stopped_at = time.time()
    time.sleep(4.0)
    dead_url = (
        f"http://{dead.groups[0]['targets'][0]}{dead.groups[0]['labels']['__metrics_path__']}"
    )
    hung_url = (
        f"http://{hung.groups[0]['targets'][0]}{hung.groups[0]['labels']['__metrics_path__']}"
    )
    live_url = f"http://{procs[2].groups[0]['targets'][0]}/targets/0/metrics"
    assert metric_value(port, "gpu_telemetry_scrape_up", target=dead_url) == 0
    assert metric_value(port, "gpu_telemetry_scrape_up", target=hung_url) == 0
    assert metric_value(port, "gpu_telemetry_scrape_up", target=live_url) == 1
    assert metric_value(port, "gpu_telemetry_scrape_errors_total", target=dead_url,
                        reason="connection") >= 2  # fmt: skip
    assert metric_value(port, "gpu_telemetry_scrape_errors_total", target=hung_url,
                        reason="timeout") >= 2  # fmt: skip
    assert metric_value(port, "gpu_telemetry_scrape_samples", target=live_url) == 80
    assert s.terminate() == 0, s.log_text()
    scrapes, _ = logged_scrapes(broker)
    assert set(scrapes.values()) == {80}  # every stored scrape is whole: 8 GPUs x 10 fields
    by_host = times_by_host(scrapes)
    assert len(by_host) == 12
    for e in procs[2:]:  # the live ones were never delayed by the dead or the hanging one
        for i in range(3):
            times = by_host[f"{e.name}-{i:04d}"]
            gaps = [b - a for a, b in pairwise(times)]
            assert len(times) >= 6 and max(gaps) <= INTERVAL_S + TIMEOUT_S, (times, gaps)
    for e in (dead, hung):  # nothing after they died or hung (a scrape in flight at most)
        for i in range(3):
            assert max(by_host[f"{e.name}-{i:04d}"]) <= stopped_at + INTERVAL_S


def test_kill_9_of_a_streamer_moves_its_targets_exactly_once_within_the_bound(
    broker, streamer_process, exporters, tmp_path
):
    e = exporters("h", 10)
    sd = write_sd(tmp_path / "targets.json", e.groups)
    session_s = 2.0
    args = scrape_args(broker, sd, "--session-timeout-ms", str(int(session_s * 1000)))
    a, b = streamer_process(*args), streamer_process(*args)
    live = lambda: set(owners(broker.address, "streamers").values())  # noqa: E731
    assert wait_until(lambda: len(live() - {""}) == 2, 30)
    time.sleep(3.0)
    a.kill()  # kill -9: no hand-back; the group gives its partitions away after its session
    killed_at = time.time()
    assert wait_until(lambda: len(live()) == 1 and "" not in live(), 15)
    # Past the latest the move may end, two more ticks: a loaded machine may start or end
    # a scrape late, and the last one may still be in flight when `b` stops.
    time.sleep(max(0.0, killed_at + session_s + 2 * INTERVAL_S + TIMEOUT_S - time.time()))
    assert b.terminate() == 0, b.log_text()
    scrapes, _ = logged_scrapes(broker)
    assert set(scrapes.values()) == {80}
    by_host = times_by_host(scrapes)
    assert len(by_host) == 10
    bound = session_s + INTERVAL_S + TIMEOUT_S + 1.0  # + the broker's session check period
    for host, times in by_host.items():
        gaps = [y - x for x, y in pairwise(times)]
        assert max(gaps) <= bound, (host, gaps)
        assert max(times) > killed_at + session_s  # every target scraped after the move
    # One streamer at a time scrapes a target, once per tick (the ticks are shared by every
    # streamer: k x interval + a hash of the URL): no tick scraped twice, before, during or
    # after the move. A scrape's time is its request's start, a little after its tick.
    for i in range(10):
        url = f"http://{e.groups[i]['targets'][0]}{e.groups[i]['labels']['__metrics_path__']}"
        offset = (zlib.crc32(url.encode()) % 10_000) / 10_000 * INTERVAL_S
        ticks = [math.floor((t - offset) / INTERVAL_S) for t in by_host[f"h-{i:04d}"]]
        assert len(ticks) == len(set(ticks)), (url, ticks)


def test_file_sd_reload_adds_and_removes_targets(broker, streamer_process, exporters, tmp_path):
    e = exporters("f", 4)
    sd = write_sd(tmp_path / "targets.json", e.groups[:2])
    s = streamer_process(*scrape_args(broker, sd))
    assert wait_until(lambda: sum(committed(broker.address, "streamers", "telemetry").values())
                      >= 2 * 80, 15)  # fmt: skip
    write_sd(sd, e.groups[1:])  # f-0000 leaves, f-0002 and f-0003 arrive
    changed_at = time.time()
    time.sleep(3.5)
    assert s.terminate() == 0, s.log_text()
    by_host = times_by_host(logged_scrapes(broker)[0])
    assert set(by_host) == {"f-0000", "f-0001", "f-0002", "f-0003"}
    assert min(by_host["f-0002"]) <= changed_at + 2 * INTERVAL_S + TIMEOUT_S
    assert max(by_host["f-0000"]) <= changed_at + INTERVAL_S + TIMEOUT_S
    assert max(by_host["f-0001"]) > changed_at + 2 * INTERVAL_S  # kept, never interrupted


def test_a_target_removed_while_its_scrape_runs_leaves_no_series(
    broker, streamer_process, tmp_path
):
    """The scrape in flight when its target leaves the targets file ends after the target's
    series were forgotten: it must not bring them back (before: up=0 for ever). Its
    counters go too (targets behind a DNS name come and go: they piled up)."""
    arrived, release = threading.Event(), threading.Event()

    def hang(_n: int) -> bytes:
        arrived.set()
        release.wait(10)
        return b""

    port = free_port()
    with serving(hang) as url:
        sd = write_sd(tmp_path / "sd.json", [{"targets": [url.split("/")[2]]}])
        s = streamer_process(
            "--broker", broker.address, "--targets-file", str(sd), "--scrape-interval-s", "1",
            "--scrape-timeout-s", "1", "--metrics-listen", f"127.0.0.1:{port}",
        )  # fmt: skip
        timeouts = lambda: metric_value(  # noqa: E731
            port, "gpu_telemetry_scrape_errors_total", target=url, reason="timeout"
        )
        try:
            assert wait_until(lambda: timeouts() >= 1, 15), s.log_text()
            arrived.clear()
            assert arrived.wait(5), s.log_text()  # a scrape in flight for 1 s from now
            write_sd(sd, [])  # seen within the interval: before that scrape times out
            known = lambda: metric_value(port, "gpu_telemetry_scrape_targets", state="known")  # noqa: E731
            assert wait_until(lambda: known() == 0, 5), s.log_text()
            time.sleep(1.5)  # the scrape has timed out and been taken by the loop
            for name in ("up", "duration_seconds", "samples"):
                assert metric_value(port, f"gpu_telemetry_scrape_{name}", target=url) == -1, name
            assert timeouts() == -1
            assert s.terminate() == 0, s.log_text()
        finally:
            release.set()


def test_finished_scrapes_go_out_together_as_whole_scrapes(
    broker, streamer_process, exporters, tmp_path
):
    """--scrape-linger-ms: one record per partition per linger, never a scrape cut in two."""
    e = exporters("g", 12)  # over 4 partitions: ~3 targets, ~3 scrapes a second each
    sd = write_sd(tmp_path / "targets.json", e.groups)
    linger_s = 1.0
    s = streamer_process(*scrape_args(broker, sd, "--scrape-linger-ms", str(int(linger_s * 1000))))
    progress = lambda: sum(committed(broker.address, "streamers", "telemetry").values())  # noqa: E731
    assert wait_until(lambda: progress() >= 4 * 12 * 80, 30)
    assert s.terminate() == 0, s.log_text()
    scrapes, logged = logged_scrapes(broker)
    assert set(scrapes.values()) == {80}
    records = read_records(broker.address, "telemetry", len(logged))
    sizes = [n for per in records.values() for n in per]
    assert sum(sizes) == len(logged) and all(n % 80 == 0 for n in sizes), sizes
    assert 2 * len(sizes) <= len(scrapes), (len(sizes), len(scrapes))  # >= 2 scrapes a record
    # A record holds scrapes that finished within one linger (a scrape starts at most the
    # timeout before it finishes; the loop looks every 50 ms, give or take scheduling).
    by_partition: dict[int, list] = defaultdict(list)
    for entry in logged:
        by_partition[entry.partition].append(entry)
    for p, sizes_of_p in records.items():
        entries = sorted(by_partition[p], key=lambda entry: entry.offset)
        start = 0
        for n in sizes_of_p:
            times = [entry.point.time_ns for entry in entries[start : start + n]]
            start += n
            assert (max(times) - min(times)) / 1e9 <= linger_s + TIMEOUT_S + 0.5, (p, n)


@contextlib.contextmanager
def serving(page: Callable[[int], bytes]) -> Iterator[str]:
    """A loopback exporter whose n-th answer is `page(n)`; yields its URL."""
    served = itertools.count()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = page(next(served))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, name="page", daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def sample_line(name: str, gpu: str, uuid: str, host: str, value: int) -> str:
    labels = f'gpu="{gpu}",UUID="{uuid}",device="nvidia{gpu}",Hostname="{host}"'
    return f"{name}{{{labels}}} {value}\n"


REJECTED = "gpu_telemetry_scrape_samples_rejected_total"


@contextlib.contextmanager
def scraping(broker, streamer_process, page: bytes, points: int) -> Iterator[tuple[int, str]]:
    """A streamer scraping one target serving `page`, once `points` are committed; yields
    its metrics port and the target URL, and stops it cleanly afterwards."""
    port = free_port()
    with serving(lambda _n: page) as url:
        s = scrape_one(broker, streamer_process, url, port)
        assert wait_until(lambda: streamed(broker) >= points, 15), s.log_text()
        yield port, url
        assert s.terminate() == 0, s.log_text()


def streamed(broker) -> int:
    """Points the streamers' group has committed on the telemetry topic."""
    return sum(committed(broker.address, "streamers", "telemetry").values())


def published_points(broker) -> list:
    """Every point of the telemetry topic up to what the streamers committed."""
    return [p for b in published_batches(broker, streamed(broker)) for p in b.points()]


def published_batches(broker, total: int) -> list[PointBatch]:
    """Every batch of the telemetry topic, until `total` points."""
    c = Consumer(broker.address, "verify-batches", "telemetry", max_unacked_points=100_000)
    c.start()
    try:
        batches: list[PointBatch] = []
        while sum(map(len, batches)) < total:
            batches += [decode(m.payload) for m in c.poll(0.2)]
        return batches
    finally:
        c.close()


def scrape_one(broker, streamer_process, url: str, port: int, *extra: str):
    return streamer_process(
        "--broker", broker.address, "--scrape", url, "--scrape-interval-s", str(INTERVAL_S),
        "--scrape-timeout-s", str(TIMEOUT_S), "--metrics-listen", f"127.0.0.1:{port}", *extra,
    )  # fmt: skip


def test_samples_no_store_could_keep_are_refused_and_counted(broker, streamer_process):
    """An over-long UUID, a backslash in a Hostname, an over-long metric name: each sample is
    skipped and counted in the streamer, and the rest of the scrape is published in batches
    the collector accepts whole (before, the store refused such a batch: dead-lettered)."""
    page = (
        "# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).\n# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n"
        + sample_line("DCGM_FI_DEV_GPU_UTIL", "0", "GPU-good", "h1", 42)
        + sample_line("DCGM_FI_DEV_GPU_UTIL", "1", "GPU-" + "9" * 300, "h1", 43)
        + sample_line("DCGM_FI_DEV_GPU_UTIL", "2", "GPU-bs", "h\\\\1", 44)  # the value h\1
        + sample_line("DCGM_FI_DEV_" + "X" * 300, "0", "GPU-good", "h1", 1)
        + sample_line("DCGM_FI_DEV_FB_USED", "0", "GPU-good", "h1", 7)
    ).encode()
    with scraping(broker, streamer_process, page, 4) as (port, _url):
        assert metric_value(port, REJECTED, reason="bad_gpu_field") >= 4  # 2 a scrape
        assert metric_value(port, REJECTED, reason="bad_metric_name") >= 2
    total = sum(committed(broker.address, "streamers", "telemetry").values())
    batches = published_batches(broker, total)
    for batch in batches:
        check_batch(batch)  # what the collector checks: raises InvalidBatch
    points = [(p.gpu.uuid, p.metric) for b in batches for p in b.points()]
    assert set(points) == {("GPU-good", m) for m in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED")}
    assert len(points) == total and total % 2 == 0


def test_bytes_that_are_no_utf8_in_a_gpu_label_refuse_the_sample(broker, streamer_process):
    """`GPU-\\xff` and `GPU-\\xfe` both decode as `GPU-\ufffd`: taken, they were one GPU with
    the other's points. Each is refused and counted; the page's good GPU is published."""
    page = (
        sample_line("DCGM_FI_DEV_GPU_UTIL", "0", "GPU-good", "h1", 42).encode()
        + sample_line("DCGM_FI_DEV_GPU_UTIL", "1", "GPU-@ff", "h1", 1)
        .encode()
        .replace(b"@ff", b"\xff")
        + sample_line("DCGM_FI_DEV_GPU_UTIL", "2", "GPU-@fe", "h1", 2)
        .encode()
        .replace(b"@fe", b"\xfe")
    )
    with scraping(broker, streamer_process, page, 2) as (port, _url):
        assert metric_value(port, REJECTED, reason="bad_encoding") >= 4  # 2 a scrape
    assert {p.gpu.uuid for p in published_points(broker)} == {"GPU-good"}


def test_a_scraped_uuid_the_rest_api_cannot_name_is_refused(broker, streamer_process):
    """A UUID label of `..` or `X/telemetry`: the REST API could not name the GPU (and `..`
    blanked the web view's fleet page). Refused `bad_uuid` as in the CSV path."""
    page = "".join(
        sample_line("DCGM_FI_DEV_GPU_UTIL", str(n), uuid, "h1", n)
        for n, uuid in enumerate(["GPU-good", "..", "GPU-good/telemetry"])
    ).encode()
    with scraping(broker, streamer_process, page, 2) as (port, _url):
        assert metric_value(port, REJECTED, reason="bad_uuid") >= 4  # 2 a scrape
    assert {p.gpu.uuid for p in published_points(broker)} == {"GPU-good"}


def test_a_sample_time_no_point_can_hold_is_refused_and_the_streamer_stays_up(
    broker, streamer_process
):
    """An exporter writing a sample time after 2262 (ms) or before the epoch: before, the
    first killed the streamer (OverflowError encoding its ns). Now each such sample is
    refused and counted; the rest of that page and the other targets are published."""
    good = sample_line("DCGM_FI_DEV_GPU_UTIL", "0", "GPU-good", "h1", 42)
    hostile = (
        sample_line("DCGM_FI_DEV_GPU_UTIL", "0", "GPU-far", "h2", 1).replace(
            "\n", " 9999999999999\n"
        )
        + sample_line("DCGM_FI_DEV_GPU_UTIL", "1", "GPU-neg", "h2", 2).replace("\n", " -1\n")
        + sample_line("DCGM_FI_DEV_FB_USED", "2", "GPU-kept", "h2", 3)
    )
    port = free_port()
    with serving(lambda _n: hostile.encode()) as bad_url, serving(lambda _n: good.encode()) as url:
        s = streamer_process(
            "--broker", broker.address, "--scrape", bad_url, "--scrape", url,
            "--scrape-interval-s", str(INTERVAL_S), "--scrape-timeout-s", str(TIMEOUT_S),
            "--metrics-listen", f"127.0.0.1:{port}",
        )  # fmt: skip
        assert wait_until(lambda: streamed(broker) >= 6, 15), s.log_text()
        assert metric_value(port, REJECTED, reason="timestamp_out_of_range") >= 4  # 2 a scrape
        assert metric_value(port, "gpu_telemetry_scrape_up", target=bad_url) == 1
        assert metric_value(port, "gpu_telemetry_scrape_samples", target=bad_url) == 1
        assert s.terminate() == 0, s.log_text()
    points = published_points(broker)
    assert {p.gpu.uuid for p in points} == {"GPU-good", "GPU-kept"}
    now_ns = time.time_ns()
    assert all(now_ns - 60e9 < p.time_ns <= now_ns for p in points)  # the scrapes' own start


def test_a_series_twice_in_one_page_is_refused_after_its_first_sample(broker, streamer_process):
    """Both samples would get the page's one timestamp, so the store kept one of them
    silently (samples=3, stored 2): now the second is refused and counted."""
    page = (
        sample_line("DCGM_FI_DEV_GPU_UTIL", "0", "GPU-a", "h1", 1)
        + sample_line("DCGM_FI_DEV_GPU_UTIL", "0", "GPU-a", "h1", 2)
        + sample_line("DCGM_FI_DEV_FB_USED", "0", "GPU-a", "h1", 3)
        # the same GPU under another label set (a MIG instance label): one series when stored
        + sample_line("DCGM_FI_DEV_FB_USED", "0", "GPU-a", "h1", 4).replace("}", ',GPU_I_ID="1"}')
    ).encode()
    with scraping(broker, streamer_process, page, 4) as (port, url):
        assert metric_value(port, REJECTED, reason="duplicate_sample") >= 4  # 2 a scrape
        assert metric_value(port, "gpu_telemetry_scrape_samples", target=url) == 2
    points = published_points(broker)
    assert len(points) == streamed(broker) and len(points) % 2 == 0
    assert {(p.metric, p.value) for p in points} == {
        ("DCGM_FI_DEV_GPU_UTIL", 1.0), ("DCGM_FI_DEV_FB_USED", 3.0)
    }  # fmt: skip


def test_remembered_series_start_afresh_at_the_bound_and_every_sample_keeps_its_gpu(
    broker, streamer_process
):
    """An exporter whose GPUs (pods) and metric names change every scrape: the streamer's
    tables stay within --scrape-max-series (they start afresh past it), and every published
    sample still names the GPU and metric it was scraped with."""

    def page(n: int) -> bytes:  # scrape n: GPUs GPU-n-0..3, metrics M_0 and N_n; value n,i,m
        return "".join(
            sample_line(f"DCGM_FI_{m}", str(i), f"GPU-{n}-{i}", "h1", n * 100 + i * 10 + k)
            for i in range(4)
            for k, m in enumerate(("M_0", f"N_{n}"))
        ).encode()

    port = free_port()
    with serving(page) as url:
        s = scrape_one(broker, streamer_process, url, port, "--scrape-max-series", "10")
        assert wait_until(lambda: metric_value(port, "gpu_telemetry_scrape_series_resets_total")
                          >= 2, 20), s.log_text()  # fmt: skip
        assert 0 <= metric_value(port, "gpu_telemetry_scrape_series", kind="gpus") <= 10 + 4
        assert s.terminate() == 0, s.log_text()
    assert "starting afresh" in s.log_text()
    total = sum(committed(broker.address, "streamers", "telemetry").values())
    points = [p for b in published_batches(broker, total) for p in b.points()]
    assert len(points) == total >= 8 * 4
    for p in points:
        n, i = map(int, p.gpu.uuid.removeprefix("GPU-").split("-"))
        k = 0 if p.metric == "DCGM_FI_M_0" else 1
        assert p.metric in ("DCGM_FI_M_0", f"DCGM_FI_N_{n}")
        assert p.value == n * 100 + i * 10 + k, p
    scrapes = Counter(p.gpu.uuid.split("-")[1] for p in points)
    assert set(scrapes.values()) == {8}  # every stored scrape whole: 4 GPUs x 2 metrics
