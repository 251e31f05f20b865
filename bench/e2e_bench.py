"""End-to-end: CSV -> streamer -> walbroker (fsync on) -> collector -> store -> gateway.

Every component is its own process (the e2e harness `tests/e2e/pipeline.Pipeline`), on
loopback, once with the SQLite store and once with InfluxDB 1.8. The streamer reads a
generated DCGM CSV (`scripts/gen_dcgm.py`) in a loop, paced by `--rate` (rows = points
per second, a token bucket), so the load is sustained rather than a burst. After a
warm-up, a measurement window of `duration_s` seconds:

- Throughput: the collector's `messages_flushed_total` (points written AND committed)
  and the streamer's `items_published` (points acknowledged by the broker) over the
  window, divided by its length.
- Latency, "processing time -> visible through the gateway": the streamer stamps each
  point with its processing time (wall clock, ns). A probe in this process polls the
  gateway's telemetry endpoint for a few sampled GPUs (keep-alive HTTP, one GPU after
  the other, each request asking for everything from that GPU's newest seen point minus
  an overlap up to now plus the overlap: one query on either store) and records, per
  point, when the response that first contained it arrived. latency = first seen -
  stamped time. That is an upper bound on the visibility delay: the point became visible
  after the previous poll of its GPU was answered; the mean poll cycle (`poll_cycle_ms`)
  is the resolution. After the run the sampled GPUs' points of the window are read again
  through the gateway; any the probe never saw count as infinitely late (`missed`; a
  percentile falling on one is null). Every point of the sampled GPUs is measured, not
  only the newest, so points that wait for a flush are counted at their true age.
- Accounting: after the streamer stops (SIGTERM: flush, commit) and the collectors'
  lag is 0, the store's exact count must equal the broker's log end offsets (points
  appended), the streamer group's committed progress and the collector's flushed count.
- CPU: utime+stime from /proc/<pid>/stat of each process (gunicorn's workers included)
  over the window, as cores used; `machine_busy_cores` (from /proc/stat) is what the
  whole machine used meanwhile: minus `pipeline_total_cores`, the other tenants' share.

`run()` is called by `bench/run.py`; `python -m bench.e2e_bench [seconds]` prints JSON.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.times import parse_time
from gputel.transport.wal import group_progress
from proto.gen import walbroker_admin_pb2 as apb
from proto.gen import walbroker_admin_pb2_grpc as apb_grpc
from scripts import gen_dcgm
from store import open_store
from tests.e2e.pipeline import Pipeline, Proc, http_get, wait_for
from tests.fixtures.broker import BrokerProcess
from walbroker.client import channel

TOPIC = "telemetry"
PARTITIONS = 16
CLK_TCK = os.sysconf("SC_CLK_TCK")
FLUSHED = "gpu_telemetry_collector_messages_flushed_total"
PUBLISHED = "gpu_telemetry_streamer_items_published_total"


# ---- /proc: CPU of processes and of the machine ---------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (gunicorn's workers under the master)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
            except OSError:
                continue
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return found


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) / CLK_TCK, sum(ticks) / CLK_TCK


class CpuMeter:
    """CPU seconds of named process trees between `start()` and `stop()`, as cores used."""

    def __init__(self, trees: dict[str, list[int]]) -> None:
        self.trees = trees
        self._t0 = 0.0
        self._before: dict[str, float] = {}
        self._machine0 = (0.0, 0.0)

    def _sample(self) -> dict[str, float]:
        return {n: sum(cpu_seconds(p) for p in tree) for n, tree in self.trees.items()}

    def start(self) -> None:
        self._t0, self._before, self._machine0 = time.monotonic(), self._sample(), machine_busy_s()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._t0
        after, (busy, total) = self._sample(), machine_busy_s()
        out = {n: round((after[n] - self._before[n]) / wall, 3) for n in after}
        out["pipeline_total_cores"] = round(sum(out.values()), 3)
        out["machine_busy_cores"] = round(
            (busy - self._machine0[0]) / (total - self._machine0[1]) * (os.cpu_count() or 1), 3
        )
        return out


# ---- Prometheus /metrics -----------------------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    """Every sample of a /metrics page, keyed `name{label=value,...}` (labels sorted)."""
    status, body = http_get(url, 5)
    if status != 200:
        return {}
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def counter(samples: dict[str, float], name: str) -> float:
    """The value of an unlabelled counter (0 when absent)."""
    return samples.get(f"{name}{{}}", 0.0)


def histogram_quantile(
    before: dict[str, float], after: dict[str, float], name: str, q: float
) -> float | None:
    """Upper bucket bound holding quantile `q` of the observations made between two scrapes."""
    buckets = []
    for key, value in after.items():
        if key.startswith(f"{name}_bucket{{le="):
            le = float(key.split("le=", 1)[1].split(",")[0].rstrip("}"))
            buckets.append((le, value - before.get(key, 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    for le, cumulative in buckets:
        if cumulative >= q * buckets[-1][1]:
            return le
    return math.inf


def hist_delta(before: dict[str, float], after: dict[str, float], name: str) -> tuple[float, float]:
    """(observations, sum of observed values) of a histogram between two scrapes, all labels."""

    def total(samples: dict[str, float], suffix: str) -> float:
        return sum(v for k, v in samples.items() if k.startswith(f"{name}_{suffix}{{"))

    return (
        total(after, "count") - total(before, "count"),
        total(after, "sum") - total(before, "sum"),
    )


def metrics_url(p: Proc) -> str:
    return p.health_url.rsplit("/", 1)[0] + "/metrics"


# ---- the latency probe -------------------------------------------------------------------


class LatencyProbe:
    """Polls the gateway for new points of a few GPUs; remembers when each was first seen.

    One named thread, started and stopped explicitly; `seen` is written by that thread
    only and read after `stop()`.
    """

    def __init__(
        self, base_url: str, uuids: list[str], overlap_s: float = 3.0, min_cycle_s: float = 0.25
    ) -> None:
        u = urllib.parse.urlsplit(base_url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.uuids, self.overlap_ns = uuids, int(overlap_s * 1e9)
        self.min_cycle_s = min_cycle_s  # bounds the load the probe itself puts on the gateway
        self.seen: dict[tuple[str, int, str], int] = {}  # (uuid, time_ns, metric) -> seen at
        self.newest = dict.fromkeys(uuids, 0)
        self.cycles, self.errors = 0, 0
        self.error_reasons: dict[str, int] = {}  # why polls failed, by first 160 chars
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-latency-probe")
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def cycle_ms(self) -> float:
        """Mean time between two polls of the same GPU (the latency figure's resolution)."""
        return (time.monotonic() - self._started) / max(1, self.cycles) * 1000

    def _loop(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                for uuid in self.uuids:
                    try:
                        self._poll(conn, uuid)
                    except (OSError, http.client.HTTPException, ValueError) as exc:
                        self.errors += 1
                        reason = f"{type(exc).__name__}: {exc}"[:160]
                        self.error_reasons[reason] = self.error_reasons.get(reason, 0) + 1
                        conn.close()
                self.cycles += 1
                self._stop.wait(self.min_cycle_s - (time.monotonic() - started))
        finally:
            conn.close()

    def _poll(self, conn: http.client.HTTPConnection, uuid: str) -> None:
        start = max(0, self.newest[uuid] - self.overlap_ns)
        # Points are stamped on this machine's clock before they are sent, so none can be
        # newer than now: a window ending just after now holds every visible one, and a
        # window of seconds is one query on either store (an open end would make the
        # InfluxDB store first look up where the data starts: a second Flux query per poll,
        # load that the probe, not the pipeline, would put on influxd).
        end = time.time_ns() + self.overlap_ns
        cursor = None
        while True:
            points, cursor = get_page(conn, uuid, start, end, cursor)
            now = time.time_ns()
            for t, metric in points:
                self.seen.setdefault((uuid, t, metric), now)
                if t > self.newest[uuid]:
                    self.newest[uuid] = t
            if not cursor:
                return


def get_page(
    conn: http.client.HTTPConnection, uuid: str, start_ns: int, end_ns: int, cursor: str | None
) -> tuple[list[tuple[int, str]], str | None]:
    """One telemetry page: ([(time_ns, metric)], next cursor)."""
    params: dict[str, Any] = {
        "start_time": f"{start_ns / 1e9:.9f}",
        "end_time": f"{end_ns / 1e9:.9f}",
        "limit": 10000,
    }
    if cursor:
        params["cursor"] = cursor
    conn.request("GET", f"/api/v1/gpus/{uuid}/telemetry?{urllib.parse.urlencode(params)}")
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise ValueError(f"telemetry {resp.status}: {body[:200]!r}")
    page = json.loads(body)
    return [(parse_time(p["time"]), p["metric"]) for p in page["points"]], page.get("next_cursor")


def window_latencies(probe: LatencyProbe, base_url: str, w0: int, w1: int) -> dict[str, Any]:
    """Latency percentiles of every point of the sampled GPUs stamped in [w0, w1]."""
    u = urllib.parse.urlsplit(base_url)
    conn = http.client.HTTPConnection(u.hostname or "", u.port or 80, timeout=30)
    lat: list[float] = []
    try:
        for uuid in probe.uuids:
            cursor = None
            while True:
                points, cursor = get_page(conn, uuid, w0, w1, cursor)
                for t, metric in points:
                    at = probe.seen.get((uuid, t, metric))
                    lat.append(math.inf if at is None else (at - t) / 1e9)
                if not cursor:
                    break
    finally:
        conn.close()
    lat.sort()

    def pct(q: float) -> float | None:
        """The q-quantile in seconds; None when it is a point the probe never saw."""
        x = lat[min(len(lat) - 1, int(q * len(lat)))] if lat else math.inf
        return None if x == math.inf else round(x, 3)

    return {
        "sampled_gpus": len(probe.uuids), "points": len(lat),
        "missed": sum(1 for x in lat if x == math.inf),
        "p50_s": pct(0.50), "p99_s": pct(0.99), "max_s": pct(1.0),
        "poll_cycle_ms": round(probe.cycle_ms, 1), "poll_errors": probe.errors,
        "poll_error_reasons": probe.error_reasons,
    }  # fmt: skip


# ---- the pipeline ------------------------------------------------------------------------


def describe_group(address: str, group: str) -> list[Any]:
    with channel(address) as ch:
        resp = apb_grpc.AdminStub(ch).DescribeGroup(
            apb.DescribeGroupRequest(group=group), timeout=10
        )
    return list(resp.partitions)


@contextmanager
def store_args(kind: str, tmp: Path) -> Iterator[tuple[list[str], str, dict[str, str]]]:
    """(collector/gateway store flags, open_store spec, open_store options) of a fresh store."""
    if kind == "sqlite":
        path = tmp / "store.db"
        yield ["--store", f"sqlite:{path}"], f"sqlite:{path}", {}
        return
    from tests.fixtures.influx import InfluxServer, influxd_path

    server = InfluxServer(influxd_path(), tmp / "influxdb")
    server.start()
    try:
        opts = server.create_database("bench").store_opts()
        flags = ["--store", "influx"] + [
            x for k in ("url", "org", "bucket", "token") for x in (f"--influx-{k}", opts[k])
        ]
        yield flags, "influx", opts
    finally:
        server.stop()


def sample_gpus(pipe: Pipeline, count: int) -> list[str]:
    """`count` GPU uuids spread over the listed GPUs (so over the partitions)."""
    uuids: list[str] = []
    assert wait_for(lambda: bool(pipe.api("/api/v1/gpus", limit=10000)["gpus"]), 60)
    time.sleep(2)  # every partition has flushed at least once by now
    uuids = [g["uuid"] for g in pipe.api("/api/v1/gpus", limit=10000)["gpus"]]
    step = max(1, len(uuids) // count)
    return uuids[::step][:count]


def influxd_pid(tmp: Path) -> int | None:
    """The pid of the influxd this process started (a child whose command names `tmp`)."""
    for pid in descendants(os.getpid()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "influxd" in cmd and str(tmp) in cmd:
            return pid
    return None


def run_store(
    kind: str, batch_size: int, duration_s: float, rate: int, hosts: int, warmup_s: float,
    probe_gpus: int,
) -> dict[str, Any]:  # fmt: skip
    """The whole pipeline on one store for `duration_s` seconds at `rate` points/s."""
    with tempfile.TemporaryDirectory(prefix=f"gputel-e2e-bench-{kind}-") as tmpdir:
        tmp = Path(tmpdir)
        csv = tmp / "dcgm.csv"
        with open(csv, "w", encoding="utf-8", newline="") as f:
            gen_dcgm.write(f, 11, hosts, 8, 10)
        broker = BrokerProcess(
            tmp / "broker", "--topic", f"{TOPIC}:{PARTITIONS}", "--topic", f"{TOPIC}.dlq:4"
        ).start()
        try:
            with store_args(kind, tmp) as (flags, spec, opts):
                pipe = Pipeline(tmp, broker, flags, csv)
                try:
                    return _measure(
                        pipe, tmp, spec, opts, batch_size, duration_s, rate, warmup_s, probe_gpus
                    )
                finally:
                    pipe.stop_all()
        finally:
            broker.stop()


def _measure(
    pipe: Pipeline, tmp: Path, spec: str, opts: dict[str, str], batch_size: int,
    duration_s: float, rate: int, warmup_s: float, probe_gpus: int,
) -> dict[str, Any]:  # fmt: skip
    collector = pipe.collector("--flush-ms", "1000", "--batch-size", str(batch_size)).start()
    gateway = pipe.start_gateway()
    streamer = pipe.streamer("--forever", "--rate", str(rate)).start()
    base = gateway.health_url.rsplit("/", 1)[0]
    probe = LatencyProbe(base, sample_gpus(pipe, probe_gpus))
    probe.start()
    pids = {"streamer": streamer, "broker": pipe.broker, "collector": collector, "gateway": gateway}
    tree = {n: descendants(p.proc.pid) for n, p in pids.items() if p.proc is not None}
    if (influx := influxd_pid(tmp)) is not None:
        tree["influxd"] = [influx]
    tree["bench_probe"] = [os.getpid()]  # this process alone, not its children
    cpu = CpuMeter(tree)
    time.sleep(warmup_s)
    urls = {"c": metrics_url(collector), "s": metrics_url(streamer), "b": pipe.broker.metrics_url}
    m0 = {k: scrape(u) for k, u in urls.items()}
    w0, t0 = time.time_ns(), time.monotonic()
    cpu.start()
    time.sleep(duration_s)
    cores = cpu.stop()
    m1 = {k: scrape(u) for k, u in urls.items()}
    w1, seconds = time.time_ns(), time.monotonic() - t0
    lag_at_end = pipe.lag()
    out = _throughput(m0, m1, seconds, rate)
    out["where_the_time_goes"] = _breakdown(m0, m1, seconds)
    out["lag_points_at_window_end"] = lag_at_end
    stopped = time.monotonic()
    out["streamer_exit_code"] = streamer.terminate(60)
    drained = wait_for(lambda: pipe.lag() == 0, 120, 0.1)
    out["drain_s"] = round(time.monotonic() - stopped, 2)
    wait_for(lambda: all(probe.newest[u] >= w1 for u in probe.uuids), 15, 0.1)
    probe.stop()
    out["latency"] = window_latencies(probe, base, w0, w1)
    out["cpu_cores"] = cores
    out["accounting"] = _accounting(pipe, collector, spec, opts, drained)
    return out


def _throughput(
    m0: dict[str, dict[str, float]], m1: dict[str, dict[str, float]], seconds: float, rate: int
) -> dict[str, Any]:
    stored = counter(m1["c"], FLUSHED) - counter(m0["c"], FLUSHED)
    published = counter(m1["s"], PUBLISHED) - counter(m0["s"], PUBLISHED)
    return {
        "offered_points_per_s": rate, "window_s": round(seconds, 2),
        "published_points_per_s": round(published / seconds),
        "stored_points_per_s": round(stored / seconds),
    }  # fmt: skip


def _breakdown(
    m0: dict[str, dict[str, float]], m1: dict[str, dict[str, float]], seconds: float
) -> dict[str, Any]:
    """Per-component timings over the window, from each process's own histograms."""
    pub_n, pub_s = hist_delta(m0["s"], m1["s"], "gpu_telemetry_streamer_publish_latency_seconds")
    fs_n, fs_s = hist_delta(m0["b"], m1["b"], "gpu_telemetry_broker_fsync_seconds")
    rec_n, rec_s = hist_delta(m0["b"], m1["b"], "gpu_telemetry_broker_group_commit_records")
    fl_n, fl_s = hist_delta(m0["c"], m1["c"], "gpu_telemetry_collector_flush_latency_seconds")
    flushed = counter(m1["c"], FLUSHED) - counter(m0["c"], FLUSHED)
    ms = lambda total, n: round(total / n * 1000, 1) if n else None  # noqa: E731
    return {
        "streamer_batches_per_s": round(pub_n / seconds, 1),
        "streamer_publish_mean_ms": ms(pub_s, pub_n),
        "streamer_publish_p99_bucket_s": histogram_quantile(
            m0["s"], m1["s"], "gpu_telemetry_streamer_publish_latency_seconds", 0.99
        ),
        "broker_group_commits_per_s": round(fs_n / seconds, 1),
        "broker_group_commit_mean_ms": ms(fs_s, fs_n),
        "broker_records_per_group_commit": round(rec_s / rec_n, 1) if rec_n else None,
        "collector_flushes_per_s": round(fl_n / seconds, 1),
        "collector_points_per_flush": round(flushed / fl_n) if fl_n else None,
        "collector_flush_mean_ms": ms(fl_s, fl_n),
        "collector_flush_p99_bucket_s": histogram_quantile(
            m0["c"], m1["c"], "gpu_telemetry_collector_flush_latency_seconds", 0.99
        ),
        "collector_share_of_time_flushing": round(fl_s / seconds, 3),
    }


def _accounting(
    pipe: Pipeline, collector: Proc, spec: str, opts: dict[str, str], drained: bool
) -> dict[str, Any]:
    """Exact counts after the drain: broker, streamer group, collector, store."""
    parts = [p for p in describe_group(pipe.broker.address, "collectors") if p.topic == TOPIC]
    appended = sum(p.log_end_offset for p in parts)
    committed = sum(group_progress(pipe.broker.address, "streamers", TOPIC).values())
    flushed = counter(scrape(metrics_url(collector)), FLUSHED)
    started = time.monotonic()
    with open_store(spec, **opts) as store:
        stored = sum(store.count_points().values())
    return {
        "drained": drained,
        "broker_log_end_offsets": appended,
        "streamer_committed_progress": committed,
        "collector_flushed": int(flushed),
        "store_count": stored,
        "store_count_s": round(time.monotonic() - started, 2),
        "exact": drained and stored == appended == committed == int(flushed),
    }


def run(
    duration_s: float = 60.0,
    rate: int = 50_000,
    hosts: int = 64,
    warmup_s: float = 5.0,
    probe_gpus: int = 8,
    stores: tuple[str, ...] = ("sqlite", "influx"),
    collector_batch_sizes: tuple[int, ...] = (5_000, 20_000),
) -> dict[str, Any]:
    """The end-to-end figures per store and collector batch size; targets as in issue 7.

    5,000 is the collector's default `--batch-size`; 20,000 shows what a larger batch
    (fewer write + commit round trips per point, a longer wait in the collector) changes.
    """
    result: dict[str, Any] = {
        "duration_s": duration_s, "offered_points_per_s": rate,
        "csv": f"{hosts} hosts x 8 GPUs x 10 metrics x 10 scrapes, looped",
        "streamer": f"1 process, --forever --rate {rate}, defaults otherwise",
        "broker": f"fsync always, {PARTITIONS} partitions",
        "collector": "1 process, --flush-ms 1000 (default), --batch-size per figure",
        "gateway": "1 gunicorn worker, the store's default threads (SQLite 1, InfluxDB 4)",
        "targets": {"stored_points_per_s": 50_000, "latency_p99_s": 2.0},
    }  # fmt: skip
    for kind in stores:
        for batch in collector_batch_sizes:
            print(f"e2e_bench: {kind}, collector batch {batch} ...", file=sys.stderr, flush=True)
            result[f"{kind}_batch_{batch}"] = run_store(
                kind, batch, duration_s, rate, hosts, warmup_s, probe_gpus
            )
    return result


if __name__ == "__main__":
    secs = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    kinds = tuple(sys.argv[2:]) or ("sqlite", "influx")
    print(json.dumps(run(duration_s=secs, stores=kinds), indent=2))
