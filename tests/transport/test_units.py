"""The boundary's pieces that need no broker: the --broker URL, Kafka settings and errors."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException

from gputel.transport.kafka_common import CONSUMER, PRODUCER, client_config
from gputel.transport.kafka_errors import from_kafka
from gputel.transport.url import parse_broker
from walbroker.errors import (
    BrokerError,
    Fenced,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)


@pytest.mark.parametrize(
    ("text", "kind", "servers"),
    [
        ("127.0.0.1:7070", "walbroker", ("127.0.0.1:7070",)),
        ("walbroker://broker-0.walbroker:7070", "walbroker", ("broker-0.walbroker:7070",)),
        ("kafka://k1:9092", "kafka", ("k1:9092",)),
        ("kafka://k1:9092, k2:9092,[::1]:9093", "kafka", ("k1:9092", "k2:9092", "[::1]:9093")),
    ],
)
def test_broker_urls_name_the_transport_and_its_servers(text, kind, servers):
    url = parse_broker(text)
    assert (url.kind, url.servers) == (kind, servers)
    assert parse_broker(str(url)) == url


@pytest.mark.parametrize(
    "text",
    ["", "nohost", "h:0", "h:99999", "kafka://", "kafka://k1:9092,", "nats://h:4222",
     "kafka://user:secret@k1:9092", "walbroker://h:1/path", "h:1;rm -rf /"],
)  # fmt: skip
def test_malformed_broker_urls_are_refused_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match="--broker"):
        parse_broker(text)


def test_kafka_config_may_not_weaken_a_guarantee_or_replace_a_flag():
    props = {"security.protocol": "SASL_SSL", "acks": "all", "linger.ms": "5"}
    conf = client_config("k:9092", props, PRODUCER)
    assert conf["security.protocol"] == "SASL_SSL" and conf["enable.idempotence"] == "true"
    assert conf["bootstrap.servers"] == "k:9092"
    with pytest.raises(ValueError, match=r"acks=1.*needs acks=all"):
        client_config("k:9092", {"acks": "1"}, PRODUCER)
    with pytest.raises(ValueError, match=r"enable\.auto\.commit"):
        client_config("k:9092", {"enable.auto.commit": "true"}, CONSUMER)
    for key in ("bootstrap.servers", "group.id", "transactional.id"):
        with pytest.raises(ValueError, match="comes from the flags"):
            client_config("k:9092", {key: "x"}, CONSUMER)


@pytest.mark.parametrize(
    ("code", "fatal", "error", "retriable"),
    [
        (KafkaError._FENCED, True, Fenced, False),
        (KafkaError.SASL_AUTHENTICATION_FAILED, False, Unauthenticated, False),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, False, PermissionDenied, False),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, False, NotFound, False),
        (KafkaError._ALL_BROKERS_DOWN, False, Unavailable, True),
        (KafkaError.NOT_COORDINATOR, False, Unavailable, True),
        (KafkaError.NOT_ENOUGH_REPLICAS, False, Unavailable, True),
        (KafkaError._FATAL, True, BrokerError, False),
    ],
)
def test_kafka_errors_join_gputels_error_tree(code, fatal, error, retriable):
    exc = from_kafka(KafkaException(KafkaError(code, "why", fatal=fatal)))
    assert type(exc) is error and exc.retriable is retriable
    assert "kafka:" in exc.message


def test_only_the_adapters_import_kafka_and_the_pipeline_only_the_boundary():
    """confluent_kafka stays inside gputel/transport/kafka_*; the streamer and the collector
    reach a broker through gputel.transport, never through walbroker's client classes."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    offenders = []
    for path in root.glob("*/**/*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] in (".venv", "tests", "build", "bench") or "gen" in rel.parts:
            continue
        tree = ast.parse(path.read_text(), str(rel))
        names = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names.append(node.module or "")
        adapter = rel.parts[:2] == ("gputel", "transport") and rel.name.startswith("kafka_")
        if any(m.split(".")[0] == "confluent_kafka" for m in names) and not adapter:
            offenders.append(f"{rel}: confluent_kafka")
        client = {"walbroker.producer", "walbroker.consumer"}
        if rel.parts[0] in ("streamer", "collector") and client & set(names):
            offenders.append(f"{rel}: {sorted(client & set(names))}")
    assert not offenders


def test_a_stuck_kafka_client_ends_the_process_with_its_exit_code_and_a_reason():
    """`exit_wedged`, the streamer's answer to a stuck transactional call, ends the process
    at once (the stuck call holds a lock nothing else gets) with WEDGED_EXIT, reason logged."""
    import subprocess
    import sys

    from gputel.transport.kafka_stream import WEDGED_EXIT

    code = (
        "import threading; from walbroker import logs; logs.setup('streamer', 'info'); "
        "from gputel.transport.kafka_stream import exit_wedged; "
        "held = threading.Lock(); held.acquire(); "  # a thread stuck forever must not stop it
        "threading.Thread(target=held.acquire).start(); "
        "exit_wedged('send_offsets_to_transaction has not returned')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == WEDGED_EXIT == 3
    out = done.stdout + done.stderr
    assert "Kafka client stuck" in out and "send_offsets_to_transaction has not returned" in out
