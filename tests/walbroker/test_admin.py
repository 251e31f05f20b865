"""`walbroker admin` against a real broker: inspect, replay live groups, reset by time, fencing."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc
from tests.support import wait_until
from tests.walbroker.helpers import decode, drain, encode, item
from walbroker.admin_cli import human_bytes
from walbroker.cli import main
from walbroker.client import channel
from walbroker.consumer import Consumer
from walbroker.errors import Code

TOPIC = "t"
ROOT = Path(__file__).resolve().parents[2]


def admin(capsys, broker, *args: str) -> tuple[int, str, str]:
    """Run `walbroker admin --broker ADDR ARGS` in-process: (exit code, stdout, stderr)."""
    rc = main(["admin", "--broker", broker.address, *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def admin_json(capsys, broker, *args: str) -> dict:
    rc, out, err = admin(capsys, broker, "--json", *args)
    assert rc == 0, err
    return json.loads(out)


def publish_round(address: str, round_no: int, per_batch: int = 10) -> list[pb.PublishAck]:
    """One batch on each of the 4 partitions; returns the acks (with publish times)."""
    reqs = [
        pb.PublishRequest(
            request_id=p,
            topic=TOPIC,
            partition=p,
            count=per_batch,
            payload=encode([item(round_no, p * 1000 + i) for i in range(per_batch)]),
        )
        for p in range(4)
    ]
    with channel(address) as ch:
        acks = list(pb_grpc.BrokerStub(ch).Publish(iter(reqs), timeout=10))
    assert all(a.status.code == Code.OK for a in acks)
    return acks


def committed(doc: dict) -> dict[int, int | None]:
    return {p["partition"]: p["committed_offset"] for p in doc["partitions"]}


def lag_points(doc: dict) -> dict[int, int]:
    return {p["partition"]: p["lag_points"] for p in doc["partitions"]}


class LiveGroup:
    """Consumers polling and committing in threads until stopped; counts every item received."""

    def __init__(self, address: str, group: str, members: int) -> None:
        self.seen: Counter[int] = Counter()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.consumers = [Consumer(address, group, TOPIC).start() for _ in range(members)]
        self.threads = [threading.Thread(target=self._run, args=(c,)) for c in self.consumers]
        for t in self.threads:
            t.start()

    def _run(self, c: Consumer) -> None:
        while not self.stop.is_set():
            msgs = c.poll(0.2)
            with self.lock:
                for m in msgs:
                    self.seen.update(decode(m))
            c.commit()

    def total(self) -> int:
        with self.lock:
            return sum(self.seen.values())

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)
        for c in self.consumers:
            c.close()


def test_sizes_for_people():
    sizes = (0, 1023, 1024, 1536, 5 * 1024**2, 8 * 1024**3, 3 * 1024**5)
    assert [human_bytes(n) for n in sizes] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "8.0 GiB", "3072.0 TiB"
    ]  # fmt: skip


def test_replay_from_earliest_redelivers_to_live_consumers_without_restart(broker, capsys):
    group = LiveGroup(broker.address, "live", members=2)
    try:

        def settled() -> bool:
            doc = admin_json(capsys, broker, "describe-group", "live")
            return doc["group"]["state"] == "stable" and len(doc["members"]) == 2

        # Both members in before anything is published: a member joining while the other
        # consumes takes partitions whose last records were read but not yet committed, and
        # gets them again (at least once, by design; this failed twice in full CI runs).
        assert wait_until(settled, 20, 0.2)
        for r in range(3):
            publish_round(broker.address, r)
        assert wait_until(lambda: group.total() == 120, 20), (
            group.total(),
            admin_json(capsys, broker, "describe-group", "live"),
        )

        def caught_up() -> bool:
            doc = admin_json(capsys, broker, "describe-group", "live")
            return doc["group"]["lag_points"] == 0 and len(doc["members"]) == 2

        assert wait_until(caught_up, 20, 0.2)
        members = {
            m["member_id"] for m in admin_json(capsys, broker, "describe-group", "live")["members"]
        }

        rc, out, err = admin(
            capsys, broker, "replay", "--group", "live", "--topic", TOPIC, "--from-earliest"
        )
        assert rc == 0, err
        assert "applied" in out and re.search(r"^0\s+30\s+0\s", out, re.M), out

        assert wait_until(lambda: group.total() == 240, 20), group.total()
        assert set(group.seen.values()) == {2}
        assert wait_until(caught_up, 20, 0.2)
        doc = admin_json(capsys, broker, "describe-group", "live")
        assert {m["member_id"] for m in doc["members"]} == members  # nobody restarted
        assert {m["host"] for m in doc["members"]} == {"127.0.0.1"}
        rc, out, _ = admin(capsys, broker, "describe-group", "live")
        head = next(line for line in out.splitlines() if line.startswith("MEMBER"))
        assert head.split() == ["MEMBER", "CLIENT", "HOST", "PARTITIONS"]
        assert sum(" 127.0.0.1 " in line for line in out.splitlines()) == 2
        rc, out, _ = admin(capsys, broker, "topics")
        sizes = [t["size_bytes"] for t in admin_json(capsys, broker, "topics")["topics"]]
        assert rc == 0 and "SIZE" in out and all(f"  {human_bytes(n)}  " in out for n in sizes)
        assert committed(doc) == {p: 30 for p in range(4)}
        assert doc["group"]["state"] == "stable"
    finally:
        group.close()


def test_to_datetime_lands_on_the_first_record_published_at_or_after(broker, capsys):
    rounds = []
    for r in range(3):
        rounds.append(publish_round(broker.address, r))
        time.sleep(0.05)
    drain(broker.address, TOPIC, 120, group="dt")
    # Between round 0 and round 1: every partition must land on its round-1 record.
    t_ns = min(a.publish_time_ns for a in rounds[1])
    assert t_ns > max(a.publish_time_ns for a in rounds[0])
    when = datetime.fromtimestamp(t_ns // 1000 / 1e6, tz=UTC).isoformat()

    before = admin_json(capsys, broker, "describe-group", "dt")
    plan = admin_json(
        capsys, broker, "reset-offsets", "--group", "dt", "--topic", TOPIC,
        "--to-datetime", when, "--dry-run",
    )  # fmt: skip
    assert plan["applied"] is False
    assert {c["partition"]: c["new_offset"] for c in plan["changes"]} == {
        a.partition: a.base_offset for a in rounds[1]
    }
    assert admin_json(capsys, broker, "describe-group", "dt")["partitions"] == before["partitions"]

    rc, _, err = admin(
        capsys, broker, "reset-offsets", "--group", "dt", "--topic", TOPIC, "--to-datetime", when
    )
    assert rc == 0, err
    after = admin_json(capsys, broker, "describe-group", "dt")
    assert committed(after) == {a.partition: a.base_offset for a in rounds[1]}
    assert lag_points(after) == {p: 20 for p in range(4)}

    # Only partition 2, by a naive (UTC) time after everything: the log end.
    late = datetime.fromtimestamp(rounds[2][0].publish_time_ns / 1e9 + 1, tz=UTC)
    plan = admin_json(
        capsys, broker, "reset-offsets", "--group", "dt", "--topic", TOPIC, "--partition", "2",
        "--to-datetime", late.replace(tzinfo=None).isoformat(),
    )  # fmt: skip
    assert [(c["partition"], c["old_offset"], c["new_offset"]) for c in plan["changes"]] == [
        (2, 10, 30)
    ]


def test_out_of_range_offsets_clamp_to_the_retained_range_and_say_so(broker, capsys):
    publish_round(broker.address, 0)
    drain(broker.address, TOPIC, 40, group="c")
    rc, out, err = admin(
        capsys, broker, "reset-offsets", "--group", "c", "--topic", TOPIC, "--partition", "1",
        "--to-offset", "500",
    )  # fmt: skip
    assert rc == 0, err
    assert "offset 500 is outside the retained range 0..10; clamped to 10" in out
    rc, out, err = admin(
        capsys, broker, "--json", "reset-offsets", "--group", "c", "--topic", TOPIC,
        "--shift-by", "-25",
    )  # fmt: skip
    changes = json.loads(out)["changes"]
    assert {(c["new_offset"], c["requested_offset"], c["clamped"]) for c in changes} == {
        (0, -15, True)
    }
    assert err.count("clamped to 0") == 4
    assert set(committed(admin_json(capsys, broker, "describe-group", "c")).values()) == {0}


def consume_stream(address: str) -> tuple[queue.Queue, Iterator[pb.ConsumeResponse], object]:
    reqs: queue.Queue = queue.Queue()

    def outgoing() -> Iterator[pb.ConsumeRequest]:
        while (r := reqs.get()) is not None:
            yield r

    ch = channel(address)
    call = pb_grpc.BrokerStub(ch).Consume(outgoing(), timeout=30)
    return reqs, call, ch


def next_of(call: Iterator[pb.ConsumeResponse], kind: str) -> pb.ConsumeResponse:
    for resp in call:
        if resp.WhichOneof("kind") == kind:
            return resp
    raise AssertionError(f"stream ended before a {kind}")


def test_a_commit_from_before_a_reset_is_fenced_and_does_not_move_the_offset(broker, capsys):
    publish_round(broker.address, 0)
    reqs, call, ch = consume_stream(broker.address)
    try:
        join = pb.Join(group="s", topic=TOPIC, role=pb.CONSUMER, session_timeout_ms=20_000)
        reqs.put(pb.ConsumeRequest(join=join))
        old_gen = next_of(call, "assignment").assignment.generation

        def commit(generation: int, offset: int) -> pb.CommitAck:
            offsets = [pb.PartitionOffset(partition=0, offset=offset)]
            c = pb.Commit(commit_id=generation, generation=generation, offsets=offsets)
            reqs.put(pb.ConsumeRequest(commit=c))
            return next_of(call, "commit_ack").commit_ack

        assert commit(old_gen, 7).status.code == Code.OK
        rc, _, err = admin(capsys, broker, "reset-offsets", "--group", "s", "--topic", TOPIC,
                           "--partition", "0", "--to-offset", "2")  # fmt: skip
        assert rc == 0, err
        new = next_of(call, "assignment").assignment
        assert new.generation > old_gen
        assert [
            (p.partition, p.position, p.restarted) for p in new.partitions if p.partition == 0
        ] == [(0, 2, True)]
        stale = commit(old_gen, 10)
        assert stale.status.code == Code.FAILED_PRECONDITION
        assert committed(admin_json(capsys, broker, "describe-group", "s"))[0] == 2
        assert commit(new.generation, 3).status.code == Code.OK
    finally:
        reqs.put(None)
        call.cancel()
        ch.close()


def scrape(broker, group: str) -> dict[str, dict[int, float]]:
    body = urllib.request.urlopen(broker.metrics_url, timeout=5).read().decode()
    out: dict[str, dict[int, float]] = {}
    pattern = re.compile(
        r'^gpu_telemetry_broker_(consumer_lag_points|consumer_lag_seconds|committed_offset)'
        r'\{group="' + group + r'",partition="(\d+)",topic="t"\} (\S+)$', re.M,
    )  # fmt: skip
    for name, p, value in pattern.findall(body):
        out.setdefault(name, {})[int(p)] = float(value)
    return out


def test_lag_metrics_agree_with_describe_group(broker, capsys):
    publish_round(broker.address, 0)
    time.sleep(0.3)
    publish_round(broker.address, 1)
    drain(broker.address, TOPIC, 80, group="m")
    admin(capsys, broker, "reset-offsets", "--group", "m", "--topic", TOPIC, "--to-offset", "3")
    t0 = time.monotonic()
    doc = admin_json(capsys, broker, "describe-group", "m")
    metrics = scrape(broker, "m")
    elapsed = time.monotonic() - t0
    assert lag_points(doc) == {p: 17 for p in range(4)}
    assert {p: int(v) for p, v in metrics["consumer_lag_points"].items()} == lag_points(doc)
    assert {p: int(v) for p, v in metrics["committed_offset"].items()} == committed(doc)
    for row in doc["partitions"]:
        scraped = metrics["consumer_lag_seconds"][row["partition"]]
        assert row["lag_seconds"] >= 0.3
        assert row["lag_seconds"] <= scraped <= row["lag_seconds"] + elapsed + 0.05
    groups = admin_json(capsys, broker, "groups")["groups"]
    assert [(g["name"], g["state"], g["lag_points"]) for g in groups] == [("m", "empty", 68)]
    body = urllib.request.urlopen(broker.metrics_url, timeout=5).read().decode()
    assert 'gpu_telemetry_broker_admin_actions_total{action="reset_offsets"} 1.0' in body
    assert 'gpu_telemetry_broker_admin_actions_total{action="describe_group"} 1.0' in body
    logged = [json.loads(line) for line in broker.log_text().splitlines() if "admin action" in line]
    assert {(d["action"], d["result"]) for d in logged} >= {("reset_offsets", "OK")}


def test_groups_known_only_from_committed_offsets_are_listed_after_a_restart(broker, capsys):
    publish_round(broker.address, 0)
    drain(broker.address, TOPIC, 40, group="old")
    broker.restart()
    rc, out, _ = admin(capsys, broker, "groups")
    assert rc == 0 and re.search(r"^old\s+t\s+-\s+empty\s", out, re.M), out
    topics = admin_json(capsys, broker, "topics")["topics"]
    assert [(t["name"], t["partitions"], t["log_end_offset"]) for t in topics] == [(TOPIC, 4, 40)]
    assert admin_json(capsys, broker, "describe-topic", TOPIC)["groups"] == ["old"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["describe-group", "nope"], 3, "unknown group 'nope'"),
        (["describe-topic", "nope"], 3, "unknown topic 'nope'"),
        (["replay", "--group", "nope", "--topic", TOPIC, "--from-earliest"], 3, "unknown group"),
        (["describe-group", "bad name!"], 2, "invalid group name"),
    ],
)
def test_unknown_names_and_bad_requests_exit_with_their_code(broker, capsys, args, code, message):
    publish_round(broker.address, 0)
    rc, out, err = admin(capsys, broker, *args)
    assert (rc, out) == (code, "")
    assert message in err and len(err.strip().splitlines()) == 1


COMMANDS = [
    ["topics"],
    ["describe-topic", TOPIC],
    ["groups"],
    ["describe-group", "g"],
    ["reset-offsets", "--group", "g", "--topic", TOPIC, "--to-latest"],
    ["replay", "--group", "g", "--topic", TOPIC, "--from-offset", "0"],
]


def test_every_command_against_a_stopped_broker_exits_4_with_one_line(broker, capsys):
    broker.stop()
    for args in COMMANDS:
        rc, out, err = admin(capsys, broker, *args)
        assert rc == 4, args
        assert out == ""
        assert err.startswith(f"walbroker admin: broker {broker.address} unreachable: ")
        assert len(err.strip().splitlines()) == 1
    proc = subprocess.run(
        [sys.executable, "-m", "walbroker.cli", "admin", "--json", "groups"],
        capture_output=True, text=True, timeout=30,
        env={**os.environ, "GPUTEL_BROKER_ADDRESS": broker.address}, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 4
    assert proc.stderr.startswith(f"walbroker admin: broker {broker.address} unreachable")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    usage = subprocess.run(
        [sys.executable, "-m", "walbroker.cli", "admin", "reset-offsets", "--group", "g"],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
