"""The producer's in-flight bookkeeping: sequences, grants, gaps closed after drops."""

from __future__ import annotations

from walbroker.inflight import Grant, InFlight


def sealed(f: InFlight, partition: int, count: int, payload: bytes = b"xx"):
    batch = f.seal(partition, count)
    f.points += count
    assert f.encoded(batch, payload)
    assert f.ready() == [batch]  # handed to the stream, as the producer does
    return batch


def test_sequences_count_per_partition_and_acks_release_points_and_bytes():
    f = InFlight("t", "p")
    a, b, c = sealed(f, 0, 3), sealed(f, 1, 4), sealed(f, 0, 5)
    assert [(x.partition, x.sequence) for x in (a, b, c)] == [(0, 0), (1, 0), (0, 1)]
    assert (f.points, f.bytes) == (12, 6)
    assert f.acked(a.request_id) is a and f.acked(a.request_id) is None
    assert (f.points, f.bytes) == (9, 4)
    assert f.in_order() == [b, c]


def test_a_refused_batch_leaves_no_gap():
    f = InFlight("t", "p")
    a, b, c = (sealed(f, 0, 1) for _ in range(3))
    f.fail(b)
    assert b.dropped and (a.sequence, c.sequence) == (0, 1)
    assert f.seal(0, 1).sequence == 2


def test_fencing_drops_the_old_grant_only_and_renumbers_the_new_one():
    f = InFlight("t", "p")
    f.grants[0] = Grant("streamers", epoch=7, progress=100)
    old = [sealed(f, 0, 10) for _ in range(2)]
    assert [b.fence for b in old] == [("streamers", 7, 110), ("streamers", 7, 120)]
    f.grants[0] = Grant("streamers", epoch=9, progress=100)  # regranted from committed 100
    new = sealed(f, 0, 10)
    assert new.fence == ("streamers", 9, 110) and new.sequence == 2
    assert f.fence(old[0]) == old
    assert f.batches == {new.request_id: new} and new.sequence == 0
    assert f.grants[0].epoch == 9  # the newer grant stays
    assert f.points == 10


def test_a_batch_fenced_while_encoding_is_not_sent():
    f = InFlight("t", "p")
    f.grants[0] = Grant("g", 1, 0)
    batch = f.seal(0, 5)
    f.fence(batch)
    assert not f.encoded(batch, b"late") and f.bytes == 0


def test_after_a_fence_the_partition_sends_nothing_until_it_is_tracked_again():
    # Sent untracked, such a batch would be appended without progress, and the partition's
    # next owner (this streamer after the broker restarted, or another) sends its rows again.
    f = InFlight("t", "p")
    f.grants[0] = Grant("g", epoch=1, progress=0)
    first = sealed(f, 0, 5)
    assert f.fence(first) == [first]
    f.points += 7  # as the producer counts a batch before sealing it
    late = f.seal(0, 7)
    assert late.dropped and f.batches == {} and f.points == 0
    assert not f.encoded(late, b"xx") and f.in_order() == []
    f.grants[0] = Grant("g", epoch=2, progress=0)  # granted anew
    again = sealed(f, 0, 7)
    assert (again.sequence, again.fence) == (0, ("g", 2, 7)) and not again.dropped
    assert sealed(f, 1, 3).fence is None  # an untracked partition is not affected


def test_a_batch_goes_out_only_after_every_batch_sealed_before_it():
    """Encoded out of order by two threads, batches still leave in sealing order."""
    f = InFlight("t", "p")
    first, second, other = f.seal(0, 1), f.seal(0, 1), f.seal(1, 1)
    assert f.encoded(second, b"2") and f.encoded(other, b"o")
    assert f.ready() == [] and f.in_order() == []  # both wait for the first
    assert f.encoded(first, b"1")
    assert f.ready() == [first, second, other] and f.ready() == []
    assert f.in_order() == [first, second, other]


def test_a_batch_dropped_while_encoding_does_not_hold_back_the_later_ones():
    f = InFlight("t", "p")
    too_big, after = f.seal(0, 1), f.seal(0, 1)
    assert f.encoded(after, b"a") and f.ready() == []
    f.fail(too_big)
    assert f.ready() == [after] and after.sequence == 0
