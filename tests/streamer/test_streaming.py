"""The streamer against a real broker process: exact counts, order, groups, SIGTERM, kill -9."""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict

import pytest
from prometheus_client import CollectorRegistry

from streamer import runner
from streamer.config import StreamerConfig
from streamer.runner import FIRST_BATCH_DIVISOR, Streamer
from streamer.scan import BLOCK_ROWS
from streamer.source import new_metrics, read_csv
from tests.fixtures.broker import free_port
from tests.streamer.dcgm_fixture import csv_text, labels_raw, row
from tests.streamer.streaming import (
    committed,
    make_csv,
    owners,
    read_log,
    read_records,
    series_counts,
    uuid_of,
)
from tests.support import wait_until
from walbroker.types import partition_for_key

G, M, S = 24, 5, 2  # GPUs, metrics, scrapes per file: 240 rows per pass


def test_one_pass_puts_every_row_in_the_log_once_in_order(broker, streamer_process, tmp_path):
    csv = make_csv(tmp_path / "dcgm.csv", G, M, S)
    s = streamer_process("--broker", broker.address, "--csv", str(csv))
    assert s.wait() == 0, s.log_text()
    logged = read_log(broker.address, "telemetry", G * M * S)
    assert len(logged) == G * M * S
    assert set(series_counts(logged).values()) == {1}
    by_gpu = defaultdict(list)
    for entry in sorted(logged, key=lambda e: (e.partition, e.offset)):
        by_gpu[entry.point.gpu.uuid].append(entry.point)
    assert len(by_gpu) == G
    for points in by_gpu.values():  # log order = processing order, per GPU and so per metric
        times = [p.time_ns for p in points]
        assert times == sorted(times)
        for m in range(M):
            series = [p for p in points if p.metric == f"DCGM_FI_DEV_M{m}"]
            assert [p.source_time_ns for p in series] == sorted(p.source_time_ns for p in series)
            assert len({p.time_ns for p in series}) == S  # one point per time in a series
        # The points of one source row group (one CSV timestamp) share one timestamp.
        by_scrape = defaultdict(set)
        for p in points:
            by_scrape[p.source_time_ns].add(p.time_ns)
        assert len(by_scrape) == S and all(len(t) == 1 for t in by_scrape.values())
    one = logged[0].point
    assert one.gpu.labels["UUID"] == one.gpu.uuid and "__name__" not in one.gpu.labels
    assert abs(one.time_ns - time.time_ns()) < 60e9  # processing time, not the CSV's


def test_a_rerun_that_finds_every_pass_done_says_it_sent_nothing(
    broker, streamer_process, tmp_path
):
    """Another file under the same group resumed at the old row counts: with `--passes` it
    found the job done and left without a row sent, and said nothing about it."""
    csv = make_csv(tmp_path / "a.csv", G, M, S)
    first = streamer_process("--broker", broker.address, "--csv", str(csv))
    assert first.wait() == 0, first.log_text()
    assert "nothing sent" not in first.log_text()
    other = make_csv(tmp_path / "b.csv", G, M, S)  # the same shape: every partition "done"
    second = streamer_process("--broker", broker.address, "--csv", str(other))
    assert second.wait() == 0, second.log_text()
    assert len(read_log(broker.address, "telemetry", G * M * S)) == G * M * S  # nothing new
    assert "nothing sent: the group's committed progress already covers every pass" in (
        second.log_text()
    )
    assert "walbroker admin delete-group streamers" in second.log_text()


def test_three_streamers_share_the_gpus_and_one_stops_mid_run(
    broker_factory, streamer_process, tmp_path
):
    broker = broker_factory("--topic", "telemetry:8", "--topic", "telemetry.dlq:2").start()
    csv = make_csv(tmp_path / "dcgm.csv", G, M, S)
    passes = 3
    args = ["--broker", broker.address, "--csv", str(csv), "--passes", str(passes)]
    streamers = [streamer_process(*args, "--rate", "120", "--linger-ms", "5") for i in range(3)]
    assert wait_until(lambda: len(set(owners(broker.address, "streamers").values())) == 3, 15)
    victim = streamers[1]
    time.sleep(0.5)
    victim.terminate()
    assert victim.wait(15) == 0, victim.log_text()
    stopped_at = time.monotonic()
    live = lambda: set(owners(broker.address, "streamers").values())  # noqa: E731
    assert wait_until(lambda: len(live()) == 2 and "" not in live(), 15)
    assert time.monotonic() - stopped_at < 15
    for s in (streamers[0], streamers[2]):
        assert s.wait(30) == 0, s.log_text()
    total = passes * G * M * S
    logged = read_log(broker.address, "telemetry", total)
    assert len(logged) == total
    assert set(series_counts(logged).values()) == {passes}  # no row twice in a pass, none lost
    assert sum(committed(broker.address, "streamers", "telemetry").values()) == total
    assert all("partition taken" in s.log_text() for s in streamers)


def test_broker_killed_mid_run_every_row_lands_exactly_once(broker, streamer_process, tmp_path):
    gpus, metrics, passes = 48, 10, 2  # 960 rows per pass
    csv = make_csv(tmp_path / "dcgm.csv", gpus, metrics, S)
    s = streamer_process(
        "--broker", broker.address, "--csv", str(csv),
        "--passes", str(passes), "--rate", "1500", "--batch-size", "50",
    )  # fmt: skip
    assert wait_until(lambda: sum(committed(broker.address, "streamers", "telemetry").values())
                      > 600, 15)  # fmt: skip
    broker.kill()
    time.sleep(1.0)
    broker.start()
    assert s.wait(40) == 0, s.log_text()
    total = passes * gpus * metrics * S
    logged = read_log(broker.address, "telemetry", total)
    per_partition = Counter(e.partition for e in logged)
    progress = committed(broker.address, "streamers", "telemetry")
    assert len(logged) == total, (per_partition, progress, s.log_text()[-6000:])
    assert set(series_counts(logged).values()) == {passes}
    assert "publish interrupted" in s.log_text()


def test_broker_restarted_mid_scan_of_a_large_file_every_row_lands_exactly_once(
    broker, streamer_process, tmp_path
):
    # Over two blocks of rows (streamer.scan.BLOCK_ROWS), so the partitions are granted anew
    # while a scan is under way, behind the rows it has gone past: they must resume at their
    # committed progress (a scan that went on skipped rows and sent others twice), and no
    # batch may leave the fenced streamer untracked (it was appended without progress).
    gpus, metrics, scrapes = 48, 10, 20  # 9,600 rows
    assert gpus * metrics * scrapes > 2 * BLOCK_ROWS
    csv = make_csv(tmp_path / "dcgm.csv", gpus, metrics, scrapes)
    s = streamer_process(
        "--broker", broker.address, "--csv", str(csv), "--rate", "1500", "--batch-size", "50",
    )  # fmt: skip
    assert wait_until(lambda: sum(committed(broker.address, "streamers", "telemetry").values())
                      >= 2000, 30, 0.01)  # fmt: skip
    broker.kill()
    time.sleep(1.0)
    broker.start()
    assert s.wait(60) == 0, s.log_text()
    total = gpus * metrics * scrapes
    logged = read_log(broker.address, "telemetry", total)
    progress = committed(broker.address, "streamers", "telemetry")
    times = Counter(series_counts(logged).values())
    assert (len(logged), times) == (total, {1: total}), (
        Counter(e.partition for e in logged),
        progress,
    )
    assert sum(progress.values()) == total


def test_pass_interval_spaces_the_passes(broker, streamer_process, tmp_path):
    csv = make_csv(tmp_path / "dcgm.csv", 4, 2, 1)
    s = streamer_process(
        "--broker", broker.address, "--csv", str(csv), "--passes", "2", "--pass-interval", "1",
    )  # fmt: skip
    assert s.wait(20) == 0, s.log_text()
    logged = read_log(broker.address, "telemetry", 16)
    times: dict[tuple[str, str], list[int]] = defaultdict(list)
    for e in logged:
        times[e.point.gpu.uuid, e.point.metric].append(e.point.time_ns)
    assert len(times) == 8
    for first, second in (sorted(t) for t in times.values()):
        assert second - first >= 0.95e9


def test_sigterm_flushes_commits_and_exits_0_and_endpoints_answer(
    broker, streamer_process, tmp_path
):
    csv = make_csv(tmp_path / "dcgm.csv", G, M, S)
    port = free_port()
    s = streamer_process(
        "--broker", broker.address, "--csv", str(csv), "--forever", "--rate", "2000",
        "--metrics-listen", f"127.0.0.1:{port}", "--linger-ms", "200",
    )  # fmt: skip
    assert wait_until(lambda: http_status(port, "/readyz") == 200, 15)
    assert http_status(port, "/healthz") == 200
    # --forever loops: wait until it has published past the first pass, then stop it.
    assert wait_until(lambda: published(port) > G * M * S, 10)
    body = http_body(port, "/metrics")
    for name in (
        "gpu_telemetry_streamer_items_published_total",
        "gpu_telemetry_streamer_backpressure_total",
        "gpu_telemetry_streamer_batch_pending",
        "gpu_telemetry_streamer_publish_latency_seconds_bucket",
        "gpu_telemetry_streamer_rows_read_total",
        'gpu_telemetry_streamer_rows_rejected_total{reason="missing_gpu_id"}',
    ):
        assert name in body, name
    s.terminate()
    assert s.wait(15) == 0, s.log_text()
    progress = sum(committed(broker.address, "streamers", "telemetry").values())
    assert progress > G * M * S
    logged = read_log(broker.address, "telemetry", progress)
    assert len(logged) == progress  # the batches in flight at SIGTERM were acked and committed
    assert "streamer stopped" in s.log_text() and '"clean": true' in s.log_text()


def published(port: int) -> float:
    """The streamer's items_published_total (0 while /metrics does not answer)."""
    for line in http_body(port, "/metrics").splitlines():
        if line.startswith("gpu_telemetry_streamer_items_published_total "):
            return float(line.split()[1])
    return 0.0


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def http_body(port: int, path: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def test_paced_stream_sends_whole_batches_and_counts_rejects_once_per_pass(broker, tmp_path):
    gpus, metrics, passes, batch = 48, 10, 3, 16  # 960 good rows per pass over 16 partitions
    csv = make_csv(tmp_path / "dcgm.csv", gpus, metrics, S)
    bad = [row(gpu_id="", uuid=uuid_of(0))] * 3 + [row(value="nan", uuid=uuid_of(1))] * 2
    with open(csv, "a", encoding="utf-8") as f:
        f.write(csv_text(bad).split("\n", 1)[1])  # the rows without a second header
    registry = CollectorRegistry()
    config = StreamerConfig(
        broker=broker.address, csv=str(csv), passes=passes, rate_rows_per_s=5000,
        batch_size=batch, metrics_listen="",
    )  # fmt: skip
    streamer = Streamer(config, new_metrics(registry))
    assert streamer.run() == 0
    good = gpus * metrics * S
    assert len(read_csv(csv)) == good
    # Rejected rows are counted once per pass, by reason, and every row read is counted.
    rejected = "gpu_telemetry_streamer_rows_rejected_total"
    assert registry.get_sample_value(rejected, {"reason": "missing_gpu_id"}) == 3 * passes
    assert registry.get_sample_value(rejected, {"reason": "value_not_finite"}) == 2 * passes
    read = registry.get_sample_value("gpu_telemetry_streamer_rows_read_total")
    assert read == (good + 5) * passes
    # Every batch is a whole chunk of --batch-size rows; only a pass's last one is shorter,
    # and on the first pass (the file's first read) each partition starts at 1/8 and doubles.
    records = read_records(broker.address, "telemetry", passes * good)
    assert sum(map(sum, records.values())) == passes * good
    for counts in records.values():
        n = sum(counts) // passes  # the partition's rows per pass
        assert counts == chunks(n, ramp(batch)) + chunks(n, [batch]) * (passes - 1)
    logged = read_log(broker.address, "telemetry", passes * good)
    assert len(logged) == passes * good
    assert set(series_counts(logged).values()) == {passes}


def ramp(batch: int) -> list[int]:
    """The batch sizes of a partition on a file's first read (streamer.runner, slow start)."""
    sizes = [max(1, batch // FIRST_BATCH_DIVISOR)]
    while sizes[-1] < batch:
        sizes.append(min(2 * sizes[-1], batch))
    return sizes


def chunks(n: int, sizes: list[int]) -> list[int]:
    """`n` rows cut in batches of `sizes` (the last size repeating), the last one shorter."""
    out: list[int] = []
    while n > 0:
        out.append(min(n, sizes[min(len(out), len(sizes) - 1)]))
        n -= out[-1]
    return out


def test_a_slowly_read_file_is_published_while_it_is_read(broker, tmp_path):
    """Slow start: on a file's first read, batches start at 1/8 of --batch-size, so the first
    block of rows goes out before the next is read (here the file is a pipe written in two
    parts); with full batches from the start nothing would leave before ~16 batches' worth."""
    full = make_csv(tmp_path / "all.csv", 1200, 10)  # 12,000 rows: ~3 blocks
    header, *lines = full.read_text(encoding="utf-8").splitlines(keepends=True)
    fifo = tmp_path / "dcgm.csv"
    os.mkfifo(fifo)
    registry = CollectorRegistry()
    config = StreamerConfig(
        broker=broker.address, csv=str(fifo), passes=1, batch_size=8_000, metrics_listen=""
    )
    streamer = Streamer(config, new_metrics(registry))
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(streamer.run()), daemon=True)
    thread.start()
    published = "gpu_telemetry_streamer_items_published_total"
    try:
        with open(fifo, "w", encoding="utf-8") as pipe:
            pipe.write(header + "".join(lines[:BLOCK_ROWS]))
            pipe.flush()
            # A first batch of each partition is out while the rest of the file is unread.
            assert wait_until(lambda: (registry.get_sample_value(published) or 0) > 0, 10)
            pipe.write("".join(lines[BLOCK_ROWS:]))
        thread.join(30)
        assert codes == [0]
    finally:
        streamer.stop()
        thread.join(10)
    records = read_records(broker.address, "telemetry", len(lines))
    assert sum(map(sum, records.values())) == len(lines)
    for counts in records.values():
        assert counts == chunks(sum(counts), ramp(8_000))


@pytest.mark.timeout(60)  # before the fix, the refused batch left the streamer waiting
def test_a_batch_over_the_byte_limit_is_sent_in_smaller_batches(broker, tmp_path):
    """80 GPUs of one partition with ~60 KB of labels each: one batch of them would be ~4.8 MB,
    over the producer's 4 MiB limit; it is cut in halves and every row lands once."""
    pad = "y" * (60 * 1024)
    uuids = [u for u in map(uuid_of, range(2000)) if partition_for_key(u, 4) == 0][:80]
    rows = [
        row(uuid=u, Hostname=f"h{i}", value=str(i),
            labels_raw=labels_raw(u, f"h{i}", "0", k8s_annotations=pad))
        for i, u in enumerate(uuids)
    ]  # fmt: skip
    csv = tmp_path / "big_labels.csv"
    csv.write_text(csv_text(rows), encoding="utf-8")
    config = StreamerConfig(
        broker=broker.address, csv=str(csv), passes=1, batch_size=8 * len(rows),
        metrics_listen="",
    )  # fmt: skip
    assert Streamer(config, new_metrics(CollectorRegistry())).run() == 0
    records = read_records(broker.address, "telemetry", len(rows))
    assert len(records[0]) > 1 and sum(records[0]) == len(rows)
    logged = read_log(broker.address, "telemetry", len(rows))
    assert sorted(int(e.point.value) for e in logged) == list(range(len(rows)))


def test_a_file_without_a_usable_row_does_not_blame_the_groups_progress(broker, tmp_path, caplog):
    csv = tmp_path / "bad.csv"
    csv.write_text(csv_text([row(gpu_id="")] * 3), encoding="utf-8")
    config = StreamerConfig(
        broker=broker.address, csv=str(csv), passes=1, group="fresh", metrics_listen=""
    )
    with caplog.at_level("INFO"):
        assert Streamer(config, new_metrics(CollectorRegistry())).run() == 0
    assert "rows rejected: missing_gpu_id x3" in caplog.text
    assert "nothing sent" not in caplog.text


def test_a_row_group_keeps_one_stamp_past_the_bound_on_remembered_times(
    broker, tmp_path, monkeypatch
):
    """More distinct CSV timestamps than the stamps kept (bound lowered to 8 here, 100,000
    in use): a group whose rows wait in another partition keeps its stamp. Before, the
    stamps were all forgotten at the bound, and such groups got one stamp per batch."""
    monkeypatch.setattr(runner, "STAMP_CACHE_MAX", 8)
    scrapes = 40
    csv = make_csv(tmp_path / "dcgm.csv", G, M, scrapes)
    config = StreamerConfig(broker=broker.address, csv=str(csv), passes=1, metrics_listen="")
    assert Streamer(config, new_metrics(CollectorRegistry())).run() == 0
    logged = read_log(broker.address, "telemetry", G * M * scrapes)
    by_group = defaultdict(set)
    for entry in logged:
        by_group[entry.point.source_time_ns].add(entry.point.time_ns)
    assert len(by_group) == scrapes
    assert all(len(stamps) == 1 for stamps in by_group.values())


def test_a_batch_not_handed_over_when_stopping_holds_back_the_rest_of_its_partition(
    broker, tmp_path
):
    """Stopping under backpressure: a batch the producer never took must not be overtaken
    by the next batch of its partition (its acknowledgement would count as the first one's
    progress: rows skipped, others sent twice). Every partition's log stays a prefix of
    its rows in file order."""
    scrapes = 20
    csv = make_csv(tmp_path / "dcgm.csv", G, M, scrapes)
    config = StreamerConfig(
        broker=broker.address, csv=str(csv), passes=1, batch_size=16, metrics_listen=""
    )
    streamer = Streamer(config, new_metrics(CollectorRegistry()))
    publish, calls = streamer._publish, []

    def refusing_once(p: int, payload: bytes, count: int) -> int:
        calls.append(p)
        if len(calls) == 5:  # what backpressure does while stopping: not handed over
            streamer.stop()
            return 0
        return publish(p, payload, count)

    streamer._publish = refusing_once  # type: ignore[method-assign]
    assert streamer.run() == 0
    total = sum(committed(broker.address, "streamers", "telemetry").values())
    logged = read_log(broker.address, "telemetry", total)
    assert 0 < len(logged) == total
    key = lambda p: (p.gpu.uuid, p.metric, p.source_time_ns)  # noqa: E731
    partition_of = {e.point.gpu.uuid: e.partition for e in logged}
    src = read_csv(str(csv))
    in_file = [(src.gpus[g].uuid, src.metrics[m], t) for g, m, _v, t in src.rows()]
    for part in set(partition_of.values()):
        got = [key(e.point) for e in sorted(logged, key=lambda e: e.offset) if e.partition == part]
        rows = [k for k in in_file if partition_of.get(k[0]) == part]
        assert got == rows[: len(got)], f"partition {part}: not a prefix of its rows"


def test_the_streamer_reads_a_fifo_header_included(broker, streamer_process, tmp_path):
    """The header check before connecting read (and so took) the start of a FIFO: the scan
    then opened it again mid-record. A FIFO is now only read by the scan."""
    csv = make_csv(tmp_path / "dcgm.csv", G, M, S)
    fifo = tmp_path / "dcgm.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(csv.read_bytes()), daemon=True)
    writer.start()
    s = streamer_process("--broker", broker.address, "--csv", str(fifo))
    assert s.wait(60) == 0, s.log_text()
    writer.join(10)
    logged = read_log(broker.address, "telemetry", G * M * S)
    assert len(logged) == G * M * S and set(series_counts(logged).values()) == {1}
