"""Passes under --pass-interval across rebalances and restarts, and bounded-memory imports.

The restart case: `make run --streamers 2` restarted, the second streamer took half the
partitions over at a pass boundary and began their next pass at once, 0.33 s after the
previous one. Passes start on a wall-clock grid now, whoever streams the partition.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

from streamer.config import StreamerConfig
from streamer.pacing import PassGrid
from tests.fixtures.broker import free_port
from tests.streamer.streaming import (
    STREAMER,
    committed,
    make_csv,
    metric_value,
    owners,
    read_log,
    series_counts,
)
from tests.support import wait_until

INTERVAL_S = 2.0


def gaps_s(logged) -> list[float]:
    """Seconds between consecutive points of every series (processing times)."""
    times: dict[tuple[str, str], list[int]] = defaultdict(list)
    for e in logged:
        times[e.point.gpu.uuid, e.point.metric].append(e.point.time_ns)
    out = []
    for t in times.values():
        t.sort()
        out += [(b - a) / 1e9 for a, b in pairwise(t)]
    return out


def test_second_streamer_and_restarts_never_start_a_pass_early(broker, streamer_process, tmp_path):
    csv = make_csv(tmp_path / "dcgm.csv", 32, 2, 1)  # 64 rows a pass over 16 partitions
    args = ["--broker", broker.address, "--csv", str(csv), "--forever"]
    args += ["--pass-interval", str(INTERVAL_S), "--session-timeout-ms", "3000"]

    def progress() -> int:
        return sum(committed(broker.address, "streamers", "telemetry").values())

    def one_more_pass_with_two_owners() -> None:
        # Progress, not a fixed sleep: under load a streamer may take seconds to start, and
        # the schedule is what is tested, not how fast a process comes up.
        assert wait_until(lambda: len(set(owners(broker.address, "streamers").values())) == 2, 30)
        start = progress()
        assert wait_until(lambda: progress() >= start + 64, 30), (start, progress())

    first = streamer_process(*args)
    assert wait_until(lambda: progress() >= 64, 30)
    second = streamer_process(*args)  # takes half the partitions at a pass boundary
    one_more_pass_with_two_owners()
    for s in (first, second):
        assert s.terminate() == 0, s.log_text()
    again = [streamer_process(*args), streamer_process(*args)]  # the restart
    one_more_pass_with_two_owners()
    for s in again:
        assert s.terminate() == 0, s.log_text()
    total = progress()
    logged = read_log(broker.address, "telemetry", total)
    assert len(logged) == total and total >= 3 * 64
    gaps = gaps_s(logged)
    assert len(gaps) >= 2 * 64
    assert min(gaps) >= INTERVAL_S * 0.95, sorted(gaps)[:5]


def test_pass_grid_agrees_across_owners() -> None:
    now = [100.3]
    grid = PassGrid(2.0, clock=lambda: now[0])
    slot = grid.slot(0.0)  # a first pass starting at 100.3 counts as the tick of 102
    assert slot == 51 and grid.next_start(slot) == 104.0
    now[0] = 100.4  # another streamer takes the partition right after that pass
    assert grid.after_handover() >= 100.3 + 2.0
    now[0] = 104.01  # the owner's next pass, a little late, belongs to the tick of 104
    assert grid.slot(104.0) == 52
    now[0] = 109.0  # a pass that could not start for long belongs to the current slot
    assert grid.slot(104.0) == 54 and grid.next_start(54) == 110.0
    assert PassGrid(None).due(1e18) and PassGrid(None).after_handover() == 0.0


def run_measuring_peak_rss(argv: list[str], log: Path) -> tuple[int, float]:
    """Run a child to completion; return its exit code and peak RSS in MiB (VmHWM)."""
    peak_kib = 0
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                break
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    peak_kib = max(peak_kib, int(line.split()[1]))
            time.sleep(0.02)
        return proc.wait(120), peak_kib / 1024


def test_import_larger_than_the_cache_is_re_read_each_pass_exactly_with_flat_memory(
    broker_factory, tmp_path: Path
):
    gpus, metrics = 64, 10
    peaks = {}
    for name, scrapes in (("small", 1), ("big", 60)):  # 640 rows; 38,400 rows (~14 MB)
        broker = broker_factory("--topic", "telemetry:4", name=name).start()
        csv = make_csv(tmp_path / f"{name}.csv", gpus, metrics, scrapes)
        argv = [STREAMER, "--broker", broker.address, "--csv", str(csv), "--passes", "2",
                "--source-cache-mb", "0.1", "--metrics-listen", "", "--time", "source"]  # fmt: skip
        log = tmp_path / f"{name}.log"
        code, peaks[name] = run_measuring_peak_rss(argv, log)
        text = log.read_text()
        assert code == 0, text
        total = 2 * gpus * metrics * scrapes
        logged = read_log(broker.address, "telemetry", total)
        assert len(logged) == total
        assert set(series_counts(logged).values()) == {2}  # every row once per pass
        assert all(e.point.time_ns == e.point.source_time_ns for e in logged)  # --time source
        broker.stop()
    assert text.count('"cached": false') == 2  # the big file was read from disk on both passes
    size_mib = (tmp_path / "big.csv").stat().st_size / 2**20
    assert size_mib > 12
    # Holding the file costs several times its size in Python objects; streaming costs a block.
    assert peaks["big"] - peaks["small"] < size_mib / 2, peaks


def test_while_the_broker_does_not_acknowledge_the_import_holds_at_most_its_pending_bound(
    broker_factory, streamer_process, tmp_path: Path
):
    """--max-pending-points is the streamer's memory bound for what it has sent and the broker
    not yet acknowledged: with the broker stopped (SIGSTOP) the reader waits at the bound, and
    once the broker runs again every row arrives, once."""
    assert StreamerConfig(broker="-").max_pending_points == 50_000  # the default: docs/limits.md
    broker = broker_factory("--topic", "telemetry:4").start()
    csv = make_csv(tmp_path / "dcgm.csv", 64, 10, 60)  # 38,400 rows
    port = free_port()
    args = ["--broker", broker.address, "--csv", str(csv), "--passes", "1", "--time", "source",
            "--batch-size", "1000", "--max-pending-points", "4000", "--rate", "8000"]  # fmt: skip
    s = streamer_process(*args, "--metrics-listen", f"127.0.0.1:{port}")
    published = "gpu_telemetry_streamer_items_published_total"
    assert wait_until(lambda: metric_value(port, published) > 0, 30), s.log_text()
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        seen = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            seen.append(metric_value(port, "gpu_telemetry_streamer_batch_pending"))
            time.sleep(0.05)
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    # the bound is checked before a batch is added: at most one batch beyond it
    assert max(seen) <= 4000 + 1000, seen
    assert seen[-1] >= 4000 - 1000, seen  # the reader did fill up to it, and waited
    assert s.wait(60) == 0, s.log_text()
    logged = read_log(broker.address, "telemetry", 38_400)
    assert len(logged) == 38_400
    assert set(series_counts(logged).values()) == {1}
