"""A real Apache Kafka (KRaft) cluster on loopback for tests, driven through scripts/kafka.sh.

`KafkaCluster` starts 1 or 3 nodes, gives the bootstrap servers, kills one node with SIGKILL and
restarts it on its own ports and storage. The session fixtures `kafka1` and `kafka3` start one
cluster each, lazily (only a session that asks for one pays its start-up, ~5-25 s), and stop it at
the end. A test that kills a node must restart it before it ends: the cluster is shared.

Every node also listens with SASL_PLAINTEXT (SCRAM-SHA-512) for the user `scram_user`, whose
password is in the file `scram_password_file` (mode 600): `sasl_bootstrap` names those servers.

A started cluster is warmed up before a test gets it: transactions are initialised for
several transactional ids, so the transaction-state topic exists and every coordinator has
loaded. (The first test on a cold 3-node cluster once saw a second streamer's
`init_transactions` answered CONCURRENT_TRANSACTIONS for 26 s, until the first one's job ended;
that the cold cluster caused it is likely, not proven.)

The 3-node cluster has replication factor 3 and `min.insync.replicas=2` for every topic, and a
broker session timeout of 3 s, so a killed broker is fenced within a few seconds.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kafka.sh"


class KafkaError(RuntimeError):
    """scripts/kafka.sh failed; the message carries its output."""


WARM_IDS = 16  # transactional ids initialised at start: each of the 4 state partitions is hit
WARM_TIMEOUT_S = 120.0


def warm_up(bootstrap: str) -> None:
    """Initialise transactions for WARM_IDS ids (creates and loads the transaction state)."""
    from confluent_kafka import Producer

    for i in range(WARM_IDS):
        producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"warm-up-{i}"})
        try:
            producer.init_transactions(WARM_TIMEOUT_S)
        finally:
            producer.flush(5)


def _run(*args: str, timeout_s: float = 180.0) -> str:
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout_s
    )
    if proc.returncode != 0:
        raise KafkaError(f"kafka.sh {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout.strip()


class KafkaCluster:
    """A 1- or 3-node KRaft cluster whose files live in `directory`."""

    def __init__(self, directory: Path, nodes: int) -> None:
        if nodes not in (1, 3):
            raise ValueError(f"1 or 3 nodes, not {nodes}")
        self.directory, self.nodes = directory, nodes
        self._bootstrap: str | None = None

    def start(self) -> str:
        """Format and start every node; returns the bootstrap servers."""
        self._bootstrap = _run("start", str(self.nodes), str(self.directory)).splitlines()[-1]
        warm_up(self._bootstrap)
        return self._bootstrap

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 10 s)."""
        _run("stop", str(self.directory))
        self._bootstrap = None

    @property
    def bootstrap(self) -> str:
        """`host:port,host:port,…` of the running cluster."""
        if self._bootstrap is None:
            raise KafkaError("the cluster is not running")
        return self._bootstrap

    @property
    def sasl_bootstrap(self) -> str:
        """The SASL_PLAINTEXT (SCRAM-SHA-512) listeners, `host:port,…`."""
        return (self.directory / "bootstrap-sasl").read_text().strip()

    scram_user = "gputel"

    @property
    def scram_password_file(self) -> Path:
        """The file holding `scram_user`'s password."""
        return self.directory / "scram-password"

    @property
    def url(self) -> str:
        """The cluster as gputel's `--broker` flag names it."""
        return f"kafka://{self.bootstrap}"

    def kill_node(self, node: int) -> None:
        """kill -9 node `node` (1-based) and wait until it is gone."""
        _run("kill", str(self.directory), str(node))

    def restart_node(self, node: int) -> None:
        """Start a killed node again; returns once it logged "Kafka Server started"."""
        _run("restart", str(self.directory), str(node))

    def node_log(self, node: int) -> str:
        """The current log of node `node`, for failure messages."""
        path = self.directory / f"node{node}" / "kafka.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _cluster(tmp_path_factory: pytest.TempPathFactory, nodes: int) -> Iterator[KafkaCluster]:
    cluster = KafkaCluster(tmp_path_factory.mktemp(f"kafka{nodes}"), nodes)
    try:
        cluster.start()  # inside the try: a half-started cluster is stopped too
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kafka1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A 1-node Kafka cluster for the whole session."""
    yield from _cluster(tmp_path_factory, 1)


@pytest.fixture(scope="session")
def kafka3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A 3-node Kafka cluster (RF=3, min.insync.replicas=2) for the whole session."""
    yield from _cluster(tmp_path_factory, 3)
