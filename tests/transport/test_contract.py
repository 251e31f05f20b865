"""The transport contract, run against real walbroker and real Kafka (the `backend` param).

What the streamer and the collector rely on, whatever the broker: batches land on the
partition the producer names, in order, byte for byte, with their point count; a group
member resumes after its committed offsets and gets back what it did not commit; the
streamer's progress is stored with its batches and a new producer resumes from it; a
dead-letter key lands on the partition gputel's hash names.
"""

from __future__ import annotations

from collections import defaultdict

from gputel.transport import factory
from tests.transport.backends import Backend, Link, consumer, drain, group, quiet
from walbroker.types import partition_for_key

PARTITIONS = 4


def payload(p: int, i: int) -> bytes:
    return f"batch {i} of partition {p}".encode() * 20


def publish(link: Link, per_partition: int, count: int = 10) -> dict[int, list[bytes]]:
    sent: dict[int, list[bytes]] = defaultdict(list)
    for i in range(per_partition):
        for p in range(PARTITIONS):
            link.producer.send_batch(p, payload(p, i), count)
            sent[p].append(payload(p, i))
    link.producer.flush(30)
    return sent


def test_batches_arrive_on_their_partition_in_order_byte_for_byte(backend: Backend):
    topic = backend.topic(PARTITIONS)
    link = Link(backend.transport, group(), topic).start()
    try:
        sent = publish(link, per_partition=5, count=7)
    finally:
        link.close()
    assert sum(n for _p, n in link.acked) == 5 * PARTITIONS * 7
    c = consumer(backend.transport, group(), topic)
    try:
        got = drain(c, 5 * PARTITIONS * 7)
    finally:
        c.close()
    by_partition: dict[int, list[bytes]] = defaultdict(list)
    for r in got:
        assert r.topic == topic and r.count == 7 and r.skip == 0
        assert r.next_offset > r.base_offset
        by_partition[r.partition].append(r.payload)
    assert by_partition == sent
    for p in range(PARTITIONS):
        offsets = [r.base_offset for r in got if r.partition == p]
        assert offsets == sorted(offsets)


def test_a_member_resumes_after_its_commits_and_gets_the_rest_again(backend: Backend):
    topic = backend.topic(PARTITIONS)
    link = Link(backend.transport, group(), topic).start()
    try:
        publish(link, per_partition=4)
    finally:
        link.close()
    g = group()
    first = consumer(backend.transport, g, topic)
    try:
        got = drain(first, 4 * PARTITIONS * 10)
        # persist-then-commit: only the first two records of each partition were "stored"
        upto = {p: [r for r in got if r.partition == p][1].next_offset for p in range(PARTITIONS)}
        assert first.commit(upto, wait=True)
    finally:
        first.close()
    second = consumer(backend.transport, g, topic)
    try:
        again = drain(second, 2 * PARTITIONS * 10)
        assert not quiet(second, 1.0)
    finally:
        second.close()
    expected = {(r.partition, r.payload) for r in got if r.base_offset >= upto[r.partition]}
    assert {(r.partition, r.payload) for r in again} == expected


def test_streamer_progress_is_stored_with_its_batches_and_a_new_producer_resumes(
    backend: Backend,
):
    topic = backend.topic(PARTITIONS)
    g = group()
    first = Link(backend.transport, g, topic).start()
    assert first.positions == dict.fromkeys(range(PARTITIONS), 0)
    try:
        publish(first, per_partition=3, count=5)
        assert first.member.progress() == dict.fromkeys(range(PARTITIONS), 15)
    finally:
        first.close()
    second = Link(backend.transport, g, topic).start()
    try:
        assert second.positions == dict.fromkeys(range(PARTITIONS), 15)
        second.producer.send_batch(0, b"five more points", 5)
        second.producer.flush(30)
        progress = second.member.progress()
    finally:
        second.close()
    assert progress == {0: 20, **dict.fromkeys(range(1, PARTITIONS), 15)}


def test_a_record_key_lands_on_the_partition_of_gputels_hash(backend: Backend):
    topic = backend.topic(PARTITIONS)
    keys = [str(i) for i in range(12)]
    producer = factory.record_producer(backend.transport, topic)
    try:
        for key in keys:
            producer.send_record(key, key.encode(), 1)
        producer.flush(30)
    finally:
        producer.close(10)
    c = consumer(backend.transport, group(), topic)
    try:
        got = drain(c, len(keys))
    finally:
        c.close()
    assert {r.payload.decode(): r.partition for r in got} == {
        k: partition_for_key(k, PARTITIONS) for k in keys
    }
    assert all(r.count == 1 for r in got)


def test_a_joining_member_takes_partitions_from_the_committed_offsets(backend: Backend):
    topic = backend.topic(PARTITIONS)
    link = Link(backend.transport, group(), topic).start()
    try:
        publish(link, per_partition=2)
    finally:
        link.close()
    g = group()
    revoked: set[int] = set()
    a = consumer(backend.transport, g, topic, on_revoke=revoked.update)
    b = None
    try:
        got = drain(a, 2 * PARTITIONS * 10)
        assert a.commit({p: max(r.next_offset for r in got if r.partition == p) for p in range(4)})
        b = consumer(backend.transport, g, topic)
        moved: list[object] = []
        for _ in range(150):  # a polls (cooperative: it hands partitions over), b joins
            a.poll(0.1)
            if revoked:
                a.release(set(revoked))
            moved += b.poll(0.1)
            if b.positions() and revoked:
                break
        assert revoked, "no partition moved to the new member"
        assert set(b.positions()) == revoked
        assert not set(a.positions()) & revoked
        assert not moved and not quiet(b, 1.0), "committed records were delivered again"
    finally:
        a.close()
        if b is not None:
            b.close()
