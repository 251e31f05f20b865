"""Unit tests without a broker: configuration, the token bucket, partition plans, endpoints."""

from __future__ import annotations

import io
import logging
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from gputel.probes import ProbeServer, split_address
from streamer.config import ConfigError, parse_config
from streamer.pacing import TokenBucket
from streamer.scan import CsvScanner
from tests.streamer.dcgm_fixture import UUID0, UUID1, csv_text, row
from walbroker.types import partition_for_key


def test_flags_win_over_environment_and_defaults_apply():
    env = {"GPUTEL_STREAMER_BROKER": "envhost:1", "GPUTEL_STREAMER_TOPIC": "t-env"}
    c = parse_config(["--broker", "flag:2", "--rate", "50"], env)
    assert (c.broker, c.topic, c.group, c.passes, c.rate_rows_per_s) == (
        "flag:2", "t-env", "streamers", 1, 50.0,
    )  # fmt: skip
    assert c.pass_interval_s is None and c.csv == "/data/dcgm.csv"


def test_environment_selects_forever_and_pass_interval():
    env = {
        "GPUTEL_STREAMER_BROKER": "b:1", "GPUTEL_STREAMER_FOREVER": "true",
        "GPUTEL_STREAMER_PASS_INTERVAL": "30",
    }  # fmt: skip
    c = parse_config([], env)
    assert c.passes is None and c.pass_interval_s == 30.0
    assert parse_config(["--passes", "3"], env).passes == 3


def test_conflicting_and_bad_values():
    with pytest.raises(SystemExit):
        parse_config(["--broker", "b:1", "--passes", "2", "--forever"], {})
    with pytest.raises(SystemExit):
        parse_config(["--broker", "b:1", "--rate", "5", "--pass-interval", "1"], {})
    with pytest.raises(ConfigError, match="--rate"):
        parse_config(["--broker", "b:1", "--rate", "-1"], {})
    with pytest.raises(ConfigError, match="PASSES"):
        parse_config(["--broker", "b:1"], {"GPUTEL_STREAMER_PASSES": "many"})


def test_token_bucket_paces_to_the_rate():
    now = [0.0]
    bucket = TokenBucket(100, burst=10, clock=lambda: now[0])
    assert bucket.grant(50) == 10  # the burst
    assert bucket.grant(5) == 0
    assert bucket.delay_s(1) == pytest.approx(0.01)
    now[0] += 0.5
    assert bucket.grant(100) == 10  # refilled, capped at the burst
    stop = threading.Event()
    stop.set()
    assert bucket.take(5, stop) == 0  # never waits once stopped


class FakeClockStop(threading.Event):
    """A stop event whose `wait` advances a fake clock instead of sleeping."""

    def __init__(self, now: list[float]) -> None:
        super().__init__()
        self.now, self.waits = now, []

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None
        self.waits.append(timeout)
        self.now[0] += timeout
        return self.is_set()


def test_token_bucket_take_waits_once_for_a_whole_chunk():
    now = [0.0]
    bucket = TokenBucket(1000, burst=100, clock=lambda: now[0])
    stop = FakeClockStop(now)
    assert bucket.take(100, stop) == 100 and stop.waits == []  # the burst is there
    assert bucket.take(40, stop) == 40  # all 40, not the few that trickled in
    assert stop.waits == [pytest.approx(0.04)]  # one sleep, as long as the chunk needs
    assert bucket.take(500, stop) == 100  # never more than a burst at once
    assert now[0] == pytest.approx(0.14)  # 240 rows at 1,000/s: the rate holds


def test_scans_split_rows_by_uuid_partition_in_file_order_and_reuse_the_cache():
    text = csv_text([
        row(uuid=UUID0, value="1"), row(uuid=UUID1, value="2"), row(uuid=UUID0, value="3"),
    ])  # fmt: skip
    p0, p1 = partition_for_key(UUID0, 64), partition_for_key(UUID1, 64)
    assert p0 != p1
    for budget, cached in ((1 << 20, True), (0, False), (48, False)):
        reads: list[int] = []

        def lines(reads: list[int] = reads) -> io.StringIO:
            reads.append(1)
            return io.StringIO(text, newline="")

        scanner = CsvScanner(
            "mem.csv", 64, lambda uuid: partition_for_key(uuid, 64), budget, block_rows=2,
            lines=lines,
        )  # fmt: skip
        for _ in range(3):
            parts = [b.parts for b in scanner.scan()]
            values = [[v for b in parts for v in b[p].value] for p in (p0, p1)]
            assert values == [[1.0, 3.0], [2.0]]
        assert len(reads) == (1 if cached else 3) and scanner.cached is cached
        assert scanner.sizes is not None and scanner.sizes[p0] == 2 and sum(scanner.sizes) == 3
        assert scanner.scans == 3


def test_a_source_without_a_usable_row_is_a_warning_once(caplog):
    """A header-only file (or one whose every row is rejected) was streamed in silence: the
    streamer finished its passes at once and nothing said that there was nothing to send."""
    for text in (csv_text([]), csv_text([row(value="n/a"), row(gpu_id="")])):
        scanner = CsvScanner(
            "mem.csv", 4, lambda uuid: partition_for_key(uuid, 4), 1 << 20,
            lines=lambda text=text: io.StringIO(text, newline=""),
        )  # fmt: skip
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="streamer.scan"):
            for _ in range(3):
                assert [b for b in scanner.scan() if any(len(p.value) for p in b.parts)] == []
        warned = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert [r.getMessage() for r in warned] == [
            "no row of the source is usable: nothing to send"
        ]


def test_endpoints_answer_probes_and_metrics():
    ready = threading.Event()
    server = ProbeServer("127.0.0.1:0", lambda: (ready.is_set(), {}), CollectorRegistry()).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert urllib.request.urlopen(base + "/healthz", timeout=2).status == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/readyz", timeout=2)
        assert err.value.code == 503
        err.value.close()
        ready.set()
        assert urllib.request.urlopen(base + "/readyz", timeout=2).status == 200
        assert urllib.request.urlopen(base + "/metrics", timeout=2).status == 200
    finally:
        server.stop()
    assert split_address(":9102") == ("0.0.0.0", 9102)


def test_a_client_that_resets_mid_answer_costs_no_traceback(capfd):
    """A scraper timing out resets its connection: no traceback on stderr, still serving."""
    import socket
    import struct
    import time

    def slow_readiness() -> tuple[bool, dict]:
        time.sleep(0.3)  # the client is gone by the time the answer is written
        return True, {}

    server = ProbeServer("127.0.0.1:0", slow_readiness, CollectorRegistry()).start()
    try:
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=2)
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # RST
        time.sleep(1.2)
        base = f"http://127.0.0.1:{server.port}"
        assert urllib.request.urlopen(base + "/healthz", timeout=2).status == 200
    finally:
        server.stop()
    assert "Traceback" not in capfd.readouterr().err
    with pytest.raises(ValueError):
        split_address("nohost")
