"""End to end, real processes, broken on purpose: the store ends with exactly K x G x M points.

Every scenario runs against SQLite and against a real InfluxDB, and counts
through the gateway's REST API per GPU and metric.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gputel import secure
from gputel.secure import SecureSetup
from gputel.transport.kafka_stream import WEDGED_EXIT
from scripts import gen_dcgm
from tests.e2e.pipeline import BIN, KafkaTarget, Pipeline, wait_for

HOSTS = 4  # one host misses a GPU: 31 GPUs
METRICS = 10
PASSES = 24
KAFKA_PASSES = 60  # 30 s of streaming: the chaos (a Kafka broker's restart) fits inside it


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "dcgm.csv"
    with open(path, "w", newline="") as f:
        gen_dcgm.write(f, seed=11, hosts=HOSTS, gpus_per_host=8, passes=1)
    return path


@pytest.fixture(scope="module")
def series(csv_file: Path) -> set[tuple[str, str]]:
    """(uuid, metric) of every row of the CSV."""
    import csv

    with open(csv_file, newline="") as f:
        return {(r["uuid"], r["metric_name"]) for r in csv.DictReader(f)}


@pytest.fixture(params=["sqlite", "influx"])
def pipeline(request, tmp_path, broker_factory, csv_file) -> Iterator[Pipeline]:
    yield from make_pipeline(request, tmp_path, broker_factory, csv_file)


@pytest.fixture
def secure_pipeline(request, tmp_path, broker_factory, csv_file) -> Iterator[Pipeline]:
    """The pipeline with TLS (mutual, to the broker) and a token per component, made by the
    code of `gputel-up --secure`; SQLite store."""
    yield from make_pipeline(request, tmp_path, broker_factory, csv_file, secure.ensure(tmp_path))


def store_args(request, tmp_path, kind: str) -> tuple[list[str], object]:
    """The store flags of every component, and the InfluxDB server (None for SQLite)."""
    if kind == "sqlite":
        return ["--store", f"sqlite:{tmp_path / 'store.db'}"], None
    influx = request.getfixturevalue("influx_server")
    conn = influx.create_database()
    return [
        "--store", "influx", "--influx-url", conn.url, "--influx-org", conn.org,
        "--influx-bucket", conn.bucket, "--influx-token", conn.token,
    ], influx  # fmt: skip


def make_pipeline(
    request, tmp_path, broker_factory, csv_file, tls: SecureSetup | None = None
) -> Iterator[Pipeline]:
    kind = "sqlite" if tls is not None else request.param
    store, influx = store_args(request, tmp_path, kind)
    credentials = None
    if tls is not None:
        credentials = grpc.ssl_channel_credentials(
            tls.ca.read_bytes(), tls.key("admin").read_bytes(), tls.cert("admin").read_bytes()
        )
    args = tls.broker_args() if tls else []
    topics = ["--topic", "telemetry:8", "--topic", "telemetry.dlq:2"]
    broker = broker_factory(*topics, *args, credentials=credentials).start()
    p = Pipeline(tmp_path, broker, store, csv_file, secure=tls)
    p.influx = influx  # type: ignore[attr-defined]
    try:
        yield p
    finally:
        p.stop_all()
        if influx is not None and not influx.running:
            influx.start()


def expect_exact(
    p: Pipeline, series: set[tuple[str, str]], passes: int, timeout_s: float = 90
) -> None:
    """Wait until the collectors caught up, then require exactly `passes` points per series."""
    assert wait_for(lambda: p.lag() == 0, timeout_s), f"collectors still lag: {p.lag()}"
    counts: Counter[tuple[str, str]] = Counter()

    def exact() -> bool:
        nonlocal counts
        counts = p.counts()
        return set(counts) == series and set(counts.values()) == {passes}

    if not wait_for(exact, 30, interval_s=1.0):
        wrong = {k: v for k, v in counts.items() if v != passes}
        missing = series - set(counts)
        pytest.fail(
            f"{len(missing)} series missing, {len(wrong)} wrong counts, e.g. "
            f"{list(wrong.items())[:5]}; expected {passes} per series"
        )


def streamers_finish(procs, timeout_s: float = 120) -> None:
    for s in procs:
        code = s.wait(timeout_s)
        assert code == 0, f"{s.name} exited with {code}:\n{s.log_tail()}"


def test_exactly_once_through_kill_9_of_broker_and_collector_and_a_streamer_handover(
    pipeline: Pipeline, series
):
    kill_9_scenario(pipeline, series)


def test_exactly_once_through_kill_9_with_tls_and_tokens(secure_pipeline: Pipeline, series):
    kill_9_scenario(secure_pipeline, series)
    assert secure_pipeline.secure is not None
    log = secure_pipeline.broker.log_text()
    assert '"tls": true' in log or "tls=True" in log


def kill_9_scenario(p: Pipeline, series: set[tuple[str, str]]) -> None:
    """kill -9 the broker twice and the collector twice, hand a streamer's GPUs over."""
    p.start_gateway()
    collector = p.collector().start()
    a = p.streamer("--passes", str(PASSES), "--pass-interval", "0.5").start()
    b = p.streamer("--passes", str(PASSES), "--pass-interval", "0.5").start()
    rng = random.Random(3)
    chaos = ["collector", "broker", "streamer", "collector", "broker"]
    for what in chaos:
        time.sleep(rng.uniform(1.0, 2.0))
        if what == "broker":
            p.broker.restart()  # kill -9 and start again on the same data dir and port
        elif what == "collector":
            collector.kill()
            collector.start()
        else:
            assert a.terminate() == 0, a.log_tail()  # b takes over a's GPUs mid-pass
    assert b.running, "the remaining streamer finished before the chaos was over"
    streamers_finish([b])
    expect_exact(p, series, PASSES)


def test_scale_three_streamers_and_collectors_down_to_one(pipeline: Pipeline, series):
    p = pipeline
    p.start_gateway()
    collectors = [p.collector().start() for _ in range(3)]
    streamers = [
        p.streamer("--passes", str(PASSES), "--pass-interval", "0.4").start() for _ in range(3)
    ]
    time.sleep(3)
    for proc in streamers[1:] + collectors[1:]:
        assert proc.terminate() == 0, proc.log_tail()
    streamers_finish(streamers[:1])
    expect_exact(p, series, PASSES)


def test_replay_from_earliest_reingests_without_duplicates(pipeline: Pipeline, series):
    p = pipeline
    p.start_gateway()
    p.collector().start()
    streamer = p.streamer("--passes", "6", "--pass-interval", "0.2").start()
    streamers_finish([streamer])
    expect_exact(p, series, 6)
    out = subprocess.run(
        [
            str(BIN / "walbroker"),
            "admin",
            "--broker",
            p.broker.address,
            "replay",
            "--group",
            "collectors",
            "--topic",
            "telemetry",
            "--from-earliest",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert wait_for(lambda: (p.lag() or 0) > 0, 5) or p.lag() == 0
    expect_exact(p, series, 6)  # re-ingested, and idempotent writes keep the counts exact


@pytest.mark.parametrize("pipeline", ["influx"], indirect=True)  # SQLite cannot go away
def test_store_outage_loses_nothing_and_recovers_alone(pipeline: Pipeline, series):
    p = pipeline
    p.start_gateway()
    collector = p.collector().start()
    streamer = p.streamer("--passes", "40", "--pass-interval", "0.5").start()
    time.sleep(2)
    p.influx.stop()  # type: ignore[attr-defined]
    try:
        assert wait_for(lambda: not _ready(collector), 30), "collector stayed ready"
        lag_during = [p.lag() for _ in range(3) if not time.sleep(2)]
        assert max(x or 0 for x in lag_during) > 0, "lag did not grow during the outage"
    finally:
        time.sleep(max(0.0, 20 - 6))
        p.influx.start()  # type: ignore[attr-defined]
    assert wait_for(lambda: _ready(collector), 60), "collector did not become ready again"
    streamers_finish([streamer], 120)
    expect_exact(p, series, 40)


def published(proc) -> float:
    """Points a streamer has had acknowledged (its /metrics)."""
    from tests.e2e.pipeline import http_get

    _, body = http_get(proc.metrics_url, 2)
    for line in body.decode().splitlines():
        if line.startswith("gpu_telemetry_streamer_items_published_total "):
            return float(line.split()[1])
    return 0.0


def _ready(proc) -> bool:
    from tests.e2e.pipeline import http_get

    return http_get(proc.health_url.replace("/healthz", "/readyz"), 2)[0] == 200


# ---- the same pipeline on Apache Kafka (gputel.transport) ---------------------------------


@pytest.fixture(params=["kafka1-sqlite", "kafka1-influx", "kafka3-sqlite"])
def kafka_pipeline(request, tmp_path, csv_file) -> Iterator[Pipeline]:
    """The pipeline on a real Kafka cluster: 1 node, or 3 (RF=3, min.insync.replicas=2)."""
    cluster_name, kind = request.param.split("-")
    cluster = request.getfixturevalue(cluster_name)
    store, influx = store_args(request, tmp_path, kind)
    p = Pipeline(tmp_path, KafkaTarget(cluster), store, csv_file)
    p.influx = influx  # type: ignore[attr-defined]
    try:
        yield p
    finally:
        p.stop_all()
        for node in range(1, cluster.nodes + 1):  # the cluster is shared: leave it whole
            with contextlib.suppress(Exception):
                cluster.restart_node(node)


def test_exactly_once_on_kafka_through_kill_9_of_collector_and_kafka_broker_and_a_fenced_streamer(
    kafka_pipeline: Pipeline, series
):
    """kill -9 the collector twice (mid-flush) and, on 3 nodes, one Kafka broker; start a
    second streamer by mistake: it fences the first, which exits 1, and finishes the job."""
    p = kafka_pipeline
    assert isinstance(p.broker, KafkaTarget)
    cluster = p.broker.cluster
    p.start_gateway()
    collector = p.collector("--batch-size", "500").start()
    a = p.streamer("--passes", str(KAFKA_PASSES), "--pass-interval", "0.5").start()
    assert wait_for(lambda: published(a) > 0, 60), a.log_tail()  # streaming: it owns the job
    rng = random.Random(5)
    chaos = ["collector", "streamer", "kafka", "collector"]
    b = None
    streaming_at_kill = []  # was the second streamer streaming when a Kafka broker died?
    for what in chaos:
        time.sleep(rng.uniform(1.0, 2.0))
        if what == "collector":
            collector.kill()  # SIGKILL, whatever it holds: held, being written, committing
            collector.start()
        elif what == "kafka" and cluster.nodes == 3:
            streaming_at_kill.append(b is not None and b.running)
            cluster.kill_node(2)
            time.sleep(rng.uniform(2.0, 4.0))  # produce and consume on the 2 left (min ISR 2)
            cluster.restart_node(2)
        elif what == "streamer":
            b = p.streamer("--passes", str(KAFKA_PASSES), "--pass-interval", "0.5").start()
            assert a.wait(60) == 1, f"the fenced streamer did not stop:\n{a.log_tail()}"
            assert "another streamer took over" in a.log_tail()
    # (The broker's restart may outlast the job under load: the kill is what must overlap it.)
    assert b is not None and all(streaming_at_kill), "the job ended before the broker was killed"
    finish_restarting_stuck(p, b, "--passes", str(KAFKA_PASSES), "--pass-interval", "0.5")
    expect_exact(p, series, KAFKA_PASSES, timeout_s=120)


def finish_restarting_stuck(p: Pipeline, streamer, *args: str) -> None:
    """Wait for the streamer to finish; one whose Kafka client got stuck (a librdkafka defect
    after a broker left the cluster) exits WEDGED_EXIT and is started again, as its
    supervisor would (gputel.transport.kafka_stream). Exactness is the caller's check."""
    for _ in range(3):
        code = streamer.wait(180)
        if code != WEDGED_EXIT:
            break
        assert "Kafka client stuck" in streamer.log_tail()
        streamer = p.streamer(*args).start()
    assert code == 0, f"{streamer.name} exited with {code}:\n{streamer.log_tail()}"


@pytest.mark.parametrize("kafka_pipeline", ["kafka1-sqlite"], indirect=True)
def test_kafka_collectors_scale_three_to_one_cooperatively_and_stay_exact(
    kafka_pipeline: Pipeline, series
):
    """Three collectors share the partitions; two leave (SIGTERM): cooperative rebalancing
    hands their partitions over with what they stored committed, and nothing is lost."""
    p = kafka_pipeline
    p.start_gateway()
    collectors = [p.collector().start() for _ in range(3)]
    streamer = p.streamer("--passes", str(PASSES), "--pass-interval", "0.4").start()
    time.sleep(4)
    for proc in collectors[1:]:
        assert proc.terminate() == 0, proc.log_tail()
    streamers_finish([streamer])
    expect_exact(p, series, PASSES)
    assert isinstance(p.broker, KafkaTarget)
    owned = lambda: lag_series(collectors[0]) == p.broker.partitions  # noqa: E731
    assert wait_for(owned, 10), "the last collector does not track every partition"


def lag_series(proc) -> int:
    """Partitions a collector exports consumer lag for (the ones it owns and tracks)."""
    from tests.e2e.pipeline import http_get

    _, body = http_get(proc.metrics_url, 2)
    prefix = "gpu_telemetry_collector_consumer_lag_records{"
    return sum(1 for line in body.decode().splitlines() if line.startswith(prefix))
