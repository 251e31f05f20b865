"""`gputel-admin` on a real 1-node Kafka: topics, groups, lag, replay, and what Kafka refuses."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from gputel.admin_cli import main
from gputel.transport.kafka_admin import bootstrap_of, error
from tests.fixtures.broker import BrokerProcess, free_port
from tests.kafka_cluster import KafkaCluster
from walbroker import admin_cli
from walbroker.cli import main as walbroker_main
from walbroker.errors import BrokerError


def admin(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> tuple[int, str, str]:
    """`gputel-admin --broker URL ARGS` in-process: (exit code, stdout, stderr)."""
    rc = main(["--broker", url, "--timeout-s", "15", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def produce(
    cluster: KafkaCluster, topic: str, count: int, partitions: int, first: int = 0
) -> dict[int, int]:
    """Records `first`… round-robin over the partitions (value i to i % partitions)."""
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "enable.idempotence": True})
    for i in range(first, first + count):
        producer.produce(topic, value=str(i).encode(), partition=i % partitions)
    assert producer.flush(30) == 0
    values = range(first, first + count)
    return {p: sum(1 for i in values if i % partitions == p) for p in range(partitions)}


def consumer(cluster: KafkaCluster, group: str, client_id: str = "test-collector") -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": cluster.bootstrap,
            "group.id": group,
            "client.id": client_id,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )


def consume(c: Consumer, count: int, timeout_s: float = 30.0) -> list[Message]:
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        got += [m for m in c.consume(count - len(got), timeout=0.5) if m.error() is None]
    return got


@pytest.fixture
def topic(kafka1: KafkaCluster, capsys: pytest.CaptureFixture[str]) -> Iterator[str]:
    """A fresh 4-partition topic created through gputel-admin."""
    t = name("telemetry")
    rc, out, err = admin(capsys, kafka1.url, "create-topic", t, "--partitions", "4")
    assert rc == 0, err
    assert out.strip() == f"topic {t} created: 4 partition(s)"
    yield t


def test_create_topic_is_idempotent_and_keeps_the_partition_count(
    kafka1: KafkaCluster, topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = admin(capsys, kafka1.url, "create-topic", topic, "--partitions", "8")
    assert rc == 0 and out.strip() == f"topic {topic} exists already (unchanged): 4 partition(s)"
    rc, out, _ = admin(capsys, kafka1.url, "--json", "topics")
    listed = {t["name"]: t for t in json.loads(out)["topics"]}
    assert listed[topic]["partitions"] == 4
    assert not any(n.startswith("__") for n in listed)  # Kafka's internal topics are left out


def test_topics_and_describe_topic_show_offsets_and_times(
    kafka1: KafkaCluster, topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before_ns = time.time_ns()
    per_partition = produce(kafka1, topic, 103, 4)
    rc, out, _ = admin(capsys, kafka1.url, "describe-topic", topic, "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["topic"]["log_end_offset"] == 103 and doc["topic"]["log_start_offset"] == 0
    ends = {p["partition"]: p["log_end_offset"] for p in doc["partitions"]}
    assert ends == per_partition
    for p in doc["partitions"]:
        # Record times come from Kafka (ms precision): within this test's window.
        assert before_ns - 10**6 <= p["first_publish_ns"] <= p["last_publish_ns"] <= time.time_ns()
    rc, out, _ = admin(capsys, kafka1.url, "describe-topic", topic)
    assert rc == 0 and out.splitlines()[0].split()[:4] == ["TOPIC", "PARTITIONS", "LOG", "START"]


def test_groups_show_members_committed_offsets_and_lag(
    kafka1: KafkaCluster, topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    group = name("collector")
    produce(kafka1, topic, 100, 4)
    c = consumer(kafka1, group)
    c.subscribe([topic])
    try:
        got = consume(c, 100)
        assert len(got) == 100
        # Commit 10 records of partition 0 only: its lag is the rest; the others never committed.
        c.commit(offsets=[TopicPartition(topic, 0, 10)], asynchronous=False)
        rc, out, _ = admin(capsys, kafka1.url, "describe-group", group, "--json")
        assert rc == 0
        doc = json.loads(out)
        assert doc["group"]["state"] == "stable" and doc["group"]["members"] == 1
        assert doc["members"][0]["client_id"] == "test-collector"
        assert sorted(doc["members"][0]["partitions"]) == [0, 1, 2, 3]
        rows = {p["partition"]: p for p in doc["partitions"]}
        assert rows[0]["committed_offset"] == 10 and rows[0]["lag_points"] == 15
        assert rows[1]["committed_offset"] is None and rows[1]["lag_points"] == 25
        assert doc["group"]["lag_points"] == 90
        assert all(r["owner"] == doc["members"][0]["member_id"] for r in rows.values())
        assert 0 < doc["group"]["lag_seconds"] < 120
        rc, out, _ = admin(capsys, kafka1.url, "groups")
        line = next(ln for ln in out.splitlines() if ln.startswith(group))
        assert line.split()[1:7] == [topic, "consumer", "stable", "0", "1", "90"]
    finally:
        c.close()


def test_replay_is_refused_while_members_are_active_and_names_them(
    kafka1: KafkaCluster, topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    group = name("collector")
    produce(kafka1, topic, 40, 4)
    c = consumer(kafka1, group, client_id="collector-7f9c")
    c.subscribe([topic])
    try:
        assert len(consume(c, 40)) == 40
        c.commit(asynchronous=False)
        args = ("replay", "--group", group, "--topic", topic, "--from-earliest")
        rc, out, err = admin(capsys, kafka1.url, *args)
        assert rc == 5 and out == ""
        assert f"group {group!r} has 1 active member(s): collector-7f9c on" in err
        assert "kubectl scale deployment <release>-collector --replicas=0" in err
        assert "run this again" in err
        # A dry run still shows the plan, and says it could not be applied now.
        rc, out, err = admin(capsys, kafka1.url, *args, "--dry-run")
        assert rc == 0 and "dry run: nothing changed" in out
        assert "Kafka refuses to apply this until they are stopped" in err
        committed = c.committed([TopicPartition(topic, p) for p in range(4)], timeout=10)
        assert [tp.offset for tp in committed] == [10, 10, 10, 10]  # nothing moved
    finally:
        c.close()


def test_replay_from_earliest_redelivers_everything_once_members_stopped(
    kafka1: KafkaCluster, topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    group = name("collector")
    produce(kafka1, topic, 40, 4)
    c = consumer(kafka1, group)
    c.subscribe([topic])
    assert len(consume(c, 40)) == 40
    c.commit(asynchronous=False)
    c.close()  # the member leaves: the group is empty now

    rc, out, err = admin(capsys, kafka1.url, "replay", "--group", group, "--topic", topic,
                         "--from-earliest", "--json")  # fmt: skip
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["applied"] is True
    assert [(ch["old_offset"], ch["new_offset"]) for ch in doc["changes"]] == [(10, 0)] * 4
    again = consumer(kafka1, group)
    again.subscribe([topic])
    try:
        values = sorted(int(m.value() or b"-1") for m in consume(again, 40))
        assert values == list(range(40))  # the whole topic, from the new committed offsets
    finally:
        again.close()


def test_replay_from_datetime_starts_at_the_first_record_at_or_after_it(
    kafka1: KafkaCluster, topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    group = name("collector")
    produce(kafka1, topic, 20, 4)  # 5 per partition, before the cut
    time.sleep(0.05)
    cut = datetime.now(UTC)
    time.sleep(0.05)
    produce(kafka1, topic, 8, 4, first=20)  # 2 per partition, after it
    c = consumer(kafka1, group)
    c.subscribe([topic])
    assert len(consume(c, 28)) == 28
    c.commit(asynchronous=False)
    c.close()

    args = ("--from-datetime", cut.isoformat(), "--partition", "1", "--partition", "3")
    rc, out, err = admin(capsys, kafka1.url, "replay", "--group", group, "--topic", topic, *args)
    assert rc == 0, err
    rows = [ln.split() for ln in out.splitlines()[2:4]]
    assert rows == [["1", "7", "5", "0", "7"], ["3", "7", "5", "0", "7"]]
    again = consumer(kafka1, group)
    again.subscribe([topic])
    try:
        got = consume(again, 4)
        assert sorted((m.partition(), int(m.value() or b"-1")) for m in got) == [
            (1, 21), (1, 25), (3, 23), (3, 27),
        ]  # fmt: skip
    finally:
        again.close()


def test_reset_clamps_to_the_retained_range_and_checks_partitions(
    kafka1: KafkaCluster, topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    group = name("collector")
    produce(kafka1, topic, 8, 4)
    c = consumer(kafka1, group)
    c.subscribe([topic])
    assert len(consume(c, 8)) == 8
    c.commit(asynchronous=False)
    c.close()
    base = ("reset-offsets", "--group", group, "--topic", topic)
    rc, out, _ = admin(capsys, kafka1.url, *base, "--to-offset", "500", "--partition", "0")
    assert rc == 0
    assert "note: partition 0: offset 500 is outside the retained range 0..2; clamped to 2" in out
    rc, out, _ = admin(capsys, kafka1.url, *base, "--shift-by", "-1", "--dry-run", "--json")
    assert [ch["new_offset"] for ch in json.loads(out)["changes"]] == [1, 1, 1, 1]
    rc, _, err = admin(capsys, kafka1.url, *base, "--to-latest", "--partition", "9")
    assert rc == 2 and "has partitions 0..3, not [9]" in err
    rc, _, err = admin(capsys, kafka1.url, "reset-offsets", "--group", name("nobody"),
                       "--topic", topic, "--to-earliest")  # fmt: skip
    assert rc == 3 and "unknown group" in err


def test_the_streamers_progress_group_is_a_producer_group_without_lag(
    kafka1: KafkaCluster, topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # What a streamer on Kafka does (gputel.transport.kafka_stream): its transactions carry its
    # progress (rows read) as committed offsets of its group, which never joins as a consumer.
    group = name("streamers")
    producer = Producer(
        {"bootstrap.servers": kafka1.bootstrap, "transactional.id": f"gputel-streamer.{group}"}
    )
    progress = Consumer({"bootstrap.servers": kafka1.bootstrap, "group.id": group})
    producer.init_transactions(30)
    producer.begin_transaction()
    producer.produce(topic, b"batch", partition=1)
    rows = [TopicPartition(topic, 1, 12_345)]
    producer.send_offsets_to_transaction(rows, progress.consumer_group_metadata(), 30)
    producer.commit_transaction(30)
    progress.close()

    # The coordinator writes the transaction's markers after commit_transaction returns, so the
    # offsets become visible to an admin a moment later (seen under load): wait for them.
    deadline = time.monotonic() + 30
    while True:
        rc, out, _ = admin(capsys, kafka1.url, "describe-group", group, "--json")
        assert rc == 0
        doc = json.loads(out)
        rows = [p for p in doc["partitions"] if p["partition"] == 1]
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert doc["group"]["role"] == "producer" and doc["group"]["lag_points"] == 0
    row = rows[0]
    assert row["committed_offset"] == 12_345 and row["lag_points"] == 0  # progress, not lag
    rc, _, err = admin(capsys, kafka1.url, "replay", "--group", group, "--topic", topic,
                       "--from-earliest")  # fmt: skip
    assert rc == 2 and "is a producer group" in err


def test_delete_group_and_topic(
    kafka1: KafkaCluster, topic: str, capsys: pytest.CaptureFixture[str]
) -> None:
    group = name("collector")
    produce(kafka1, topic, 4, 4)
    c = consumer(kafka1, group)
    c.subscribe([topic])
    try:
        assert len(consume(c, 4)) == 4
        c.commit(asynchronous=False)
        assert admin(capsys, kafka1.url, "delete-group", group)[0] == 5
        rc, _, err = admin(capsys, kafka1.url, "delete-topic", topic)
        assert rc == 5 and group in err and "--force" in err
    finally:
        c.close()
    rc, out, _ = admin(capsys, kafka1.url, "delete-group", group)
    assert rc == 0 and out.strip() == f"group {group} deleted: 4 committed offset(s) removed"
    assert admin(capsys, kafka1.url, "describe-group", group)[0] == 3
    assert admin(capsys, kafka1.url, "delete-topic", topic)[0] == 0
    assert admin(capsys, kafka1.url, "describe-topic", topic)[0] == 3


def test_kafka_usage_errors(
    kafka1: KafkaCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = admin(capsys, "kafka://no-port", "topics")
    assert rc == 2 and "not a kafka://HOST:PORT" in err
    rc, _, err = admin(capsys, kafka1.url, "--token-file", str(tmp_path / "t"), "topics")
    assert rc == 2 and "--token-file: not for Kafka; put credentials in --kafka-config" in err
    shared = tmp_path / "client.properties"
    shared.write_text("sasl.password=hunter2\n")
    shared.chmod(0o644)
    rc, _, err = admin(capsys, kafka1.url, "--kafka-config", str(shared), "topics")
    assert rc == 2 and "literal secret" in err and "hunter2" not in err
    # A good --kafka-config file is used (here: a client id and nothing secret).
    good = tmp_path / "good.properties"
    good.write_text("client.id=gputel-admin-test\n")
    assert admin(capsys, kafka1.url, "--kafka-config", str(good), "topics")[0] == 0


def _sasl_properties(cluster: KafkaCluster, path: Path, password_ref: str) -> Path:
    path.write_text(
        "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n"
        f"sasl.username={cluster.scram_user}\nsasl.password={password_ref}\n"
    )
    path.chmod(0o644)  # readable by all: it holds a reference, not the password
    return path


def test_sasl_credentials_come_from_a_file_or_the_environment(
    kafka1: KafkaCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"kafka://{kafka1.sasl_bootstrap}"
    by_file = _sasl_properties(
        kafka1, tmp_path / "file.properties", f"${{file:{kafka1.scram_password_file}}}"
    )
    t = name("sasl")
    rc, out, err = admin(capsys, url, "--kafka-config", str(by_file), "create-topic", t)
    assert rc == 0, err
    monkeypatch.setenv("TEST_KAFKA_PASSWORD", kafka1.scram_password_file.read_text().strip())
    by_env = _sasl_properties(kafka1, tmp_path / "env.properties", "${env:TEST_KAFKA_PASSWORD}")
    rc, out, err = admin(capsys, url, "--kafka-config", str(by_env), "describe-topic", t)
    assert rc == 0 and out.startswith("TOPIC"), err
    # Without the credentials the SASL listener refuses: exit 5 (refused), not "unreachable".
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    bad = _sasl_properties(kafka1, tmp_path / "bad.properties", f"${{file:{wrong}}}")
    rc, out, err = admin(capsys, url, "--kafka-config", str(bad), "--timeout-s", "5", "topics")
    assert rc == 5 and "SASL authentication error" in err, err
    assert "not-the-password" not in err and out == ""


def test_unreachable_kafka_exits_4(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--broker", f"kafka://127.0.0.1:{free_port()}", "--timeout-s", "2", "topics"])
    err = capsys.readouterr().err
    assert rc == 4, err
    assert "unreachable" in err


def test_gputel_admin_passes_walbroker_urls_to_walbroker_admin(
    broker: BrokerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = admin(capsys, f"walbroker://{broker.address}", "create-topic", "t1")
    assert rc == 0, err
    assert out.strip() == "topic t1 created: 4 partition(s)"
    rc, out, _ = admin(capsys, broker.address, "topics")
    assert rc == 0 and out.splitlines()[1].split()[:2] == ["t1", "4"]


def test_walbroker_admin_points_kafka_urls_to_gputel_admin(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert walbroker_main(["admin", "--broker", "kafka://127.0.0.1:9092", "topics"]) == 2
    assert "use gputel-admin" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("code", "kind", "exit_code"),
    [
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, "PermissionDenied", 5),
        (KafkaError.SASL_AUTHENTICATION_FAILED, "Unauthenticated", 5),
        (KafkaError.GROUP_ID_NOT_FOUND, "NotFound", 3),
        (KafkaError.NON_EMPTY_GROUP, "InUse", 5),
        (KafkaError.INVALID_PARTITIONS, "InvalidArgument", 2),
        (KafkaError._ALL_BROKERS_DOWN, "Unavailable", 4),
        (KafkaError.UNKNOWN, "BrokerError", 1),
    ],
)
def test_kafka_errors_map_to_the_admin_exit_codes(
    code: int, kind: str, exit_code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    raised = error(KafkaException(KafkaError(code)), "doing it")
    assert type(raised).__name__ == kind
    assert raised.message.startswith("doing it: ")
    assert admin_cli.fail(raised, "kafka://k:9092", "gputel-admin") == exit_code
    assert capsys.readouterr().err.startswith("gputel-admin: ")


@pytest.mark.parametrize("url", ["k:9092", "kafka://", "kafka://k", "kafka://k:x", "kafka://:9092"])
def test_bad_kafka_urls_are_refused(url: str) -> None:
    with pytest.raises(BrokerError, match="not a kafka://HOST:PORT"):
        bootstrap_of(url)
