"""Fast tests without processes: configuration, held records, merging, dead-letter envelopes."""

from __future__ import annotations

import pytest

from collector.config import ConfigError, from_args
from collector.deadletter import unwrap, wrap
from collector.future import split_future
from collector.pending import HeldRecord, Pending, merge, tail
from collector.writer import JobState, WriteJob
from proto.batch import Gpu, PointBatch
from walbroker.consumer import Message

A = Gpu(uuid="GPU-a", hostname="h1", gpu=0)
B = Gpu(uuid="GPU-b", hostname="h2", gpu=0)
S = 1_000_000_000


def batch(gpus: list[Gpu], metrics: list[str], rows: list[tuple[int, int, int]]) -> PointBatch:
    return PointBatch(
        gpus=gpus,
        metrics=metrics,
        gpu_index=[g for g, _, _ in rows],
        metric_index=[m for _, m, _ in rows],
        time_ns=[t for _, _, t in rows],
        value=[float(t) for _, _, t in rows],
        source_time_ns=[0 for _ in rows],
    )


def points(b: PointBatch) -> list[tuple[str, str, int]]:
    return [(p.gpu.uuid, p.metric, p.time_ns) for p in b.points()]


def message(partition: int, base: int, count: int, payload: bytes = b"") -> Message:
    return Message("telemetry", partition, base, count, 123, payload, 1)


def test_env_is_read_when_called_and_flags_win():
    env = {
        "GPUTEL_COLLECTOR_BROKER": "b:1",
        "GPUTEL_COLLECTOR_BATCH_SIZE": "700",
        "GPUTEL_INFLUX_URL": "http://i:8086",
        "GPUTEL_INFLUX_BUCKET": "telemetry",
        "GPUTEL_INFLUX_TOKEN": "s3cret-token",
    }
    c = from_args(["--store", "influx", "--batch-size", "900"], env)
    assert (c.broker, c.batch_size, c.influx_url, c.influx_token) == (
        "b:1", 900, "http://i:8086", "s3cret-token"
    )  # fmt: skip
    assert c.dead_letter_topic == "telemetry.dlq"
    assert "s3cret" not in repr(c)
    assert from_args(["--store", "sqlite:x.db"], env).store_options() == {
        "sqlite_synchronous": "full"  # a write is on disk before its offsets are committed
    }
    env["GPUTEL_COLLECTOR_SQLITE_SYNCHRONOUS"] = "normal"
    assert from_args(["--store", "sqlite:x.db"], env).sqlite_synchronous == "normal"
    env["GPUTEL_COLLECTOR_SQLITE_SYNCHRONOUS"] = "off"
    with pytest.raises(ConfigError, match="--sqlite-synchronous must be full or normal"):
        from_args(["--store", "sqlite:x.db"], env)


def test_inconsistent_limits_are_rejected():
    with pytest.raises(ConfigError, match="below --batch-size"):
        from_args(["--broker", "b:1", "--store", "sqlite:x", "--max-unacked-points", "10"], {})
    with pytest.raises(ConfigError, match=r"--max-batch-points \(4000\) is below --batch-size"):
        from_args(["--broker", "b:1", "--store", "sqlite:x", "--max-batch-points", "4000"], {})
    with pytest.raises(ConfigError, match="--log-level"):
        from_args(["--broker", "b:1", "--store", "sqlite:x", "--log-level", "loud"], {})


def test_max_batch_points_defaults_to_at_least_the_batch_size_and_reads_the_env():
    base = ["--broker", "b:1", "--store", "sqlite:x"]
    assert from_args(base, {}).max_batch_points == 50_000
    assert from_args([*base, "--batch-size", "80000"], {}).max_batch_points == 80_000
    env = {"GPUTEL_COLLECTOR_MAX_BATCH_POINTS": "20000"}
    assert from_args(base, env).max_batch_points == 20_000
    assert from_args([*base, "--max-batch-points", "6000"], env).max_batch_points == 6_000


def test_merge_lists_each_gpu_and_metric_once_and_keeps_every_point():
    b1 = batch([A, B], ["m1", "m2"], [(0, 0, 1), (1, 1, 2)])
    b2 = batch([Gpu(uuid="GPU-b", hostname="h2", gpu=0)], ["m2", "m3"], [(0, 0, 3), (0, 1, 4)])
    merged = merge([b1, b2])
    assert [g.uuid for g in merged.gpus] == ["GPU-a", "GPU-b"]
    assert merged.metrics == ["m1", "m2", "m3"]
    assert points(merged) == points(b1) + points(b2)


def test_merge_keeps_the_first_entry_of_a_gpu_listed_twice_and_numbers_new_ones_in_order():
    c = Gpu(uuid="GPU-c", hostname="h3", gpu=1)
    a_labelled = Gpu("GPU-a", "h1", 0, labels={"x": "1"})
    b1 = batch([B], ["m"], [(0, 0, 1)])
    b2 = batch([a_labelled, B, A, c], ["m"], [(0, 0, 2), (1, 0, 3), (2, 0, 4), (3, 0, 5)])
    merged = merge([b1, b2])
    assert [g.uuid for g in merged.gpus] == ["GPU-b", "GPU-a", "GPU-c"]
    assert merged.gpus[1] is a_labelled  # the first entry of GPU-a wins
    assert points(merged) == points(b1) + points(b2)


def test_tail_drops_points_already_consumed():
    b = batch([A], ["m"], [(0, 0, t) for t in range(5)])
    assert [t for _, _, t in points(tail(b, 2))] == [2, 3, 4]
    assert tail(b, 0) is b


def test_pending_offsets_drop_and_dead_records():
    p = Pending()
    good = HeldRecord(message(0, 0, 2), batch([A], ["m"], [(0, 0, 1), (0, 0, 2)]))
    later = HeldRecord(message(0, 2, 1), batch([A], ["m"], [(0, 0, 3)]))
    other = HeldRecord(message(1, 10, 1), batch([B], ["m"], [(0, 0, 1)]))
    for r in (good, later, other):
        p.add(r)
    assert (p.points, p.offsets()) == (4, {0: 3, 1: 11})
    p.mark_dead(later)
    assert (p.points, p.offsets(), len(p.batches())) == (3, {0: 3, 1: 11}, 2)
    assert p.drop({1}) == 1
    assert (p.points, p.offsets()) == (2, {0: 3})


def test_dead_letter_envelope_round_trip():
    header, payload = unwrap(wrap(message(3, 42, 7, b"\x00raw"), "decode", "bad bytes"))
    assert payload == b"\x00raw"
    assert (header["partition"], header["base_offset"], header["count"]) == (3, 42, 7)
    assert (header["reason"], header["error"]) == ("decode", "bad bytes")
    assert header["topic"] == "telemetry"
    with pytest.raises(ValueError, match="not a dead-letter envelope"):
        unwrap(b"GTDX\x01\x00\x00\x00\x00")


def test_split_future_keeps_points_within_the_skew():
    now = 1_000 * S
    b = batch([A, B], ["m"], [(0, 0, now), (1, 0, now + 300 * S), (0, 0, now + 301 * S)])
    split = split_future(b, 300, now_ns=now)
    assert (split.future, split.newest_ns) == (1, now + 301 * S)
    assert points(split.kept) == [("GPU-a", "m", now), ("GPU-b", "m", now + 300 * S)]
    assert split.reason().startswith("1 of 3 points stamped more than the allowed skew")
    unchanged = batch([A], ["m"], [(0, 0, now)])
    assert split_future(unchanged, 300, now_ns=now).kept is unchanged  # the common case: no copy
    assert from_args(["--broker", "b:1", "--store", "sqlite:x"], {}).max_future_skew_s == 300
    flags = ["--broker", "b:1", "--store", "sqlite:x", "--max-future-skew-s"]
    assert from_args([*flags, "5"], {}).max_future_skew_s == 5
    for bad in ("-1", "soon"):
        with pytest.raises(ConfigError, match="max-future-skew-s"):
            from_args([*flags, bad], {})


def test_write_job_transitions_are_asserted():
    job = WriteJob(Pending())
    with pytest.raises(AssertionError, match="HELD -> WRITING"):
        job.to(JobState.WRITING)  # never handed to the writer unprepared
    for state in (JobState.PREPARED, JobState.WRITING, JobState.FAILED, JobState.RETRYING):
        job.to(state)
    job.to(JobState.WRITING)
    job.to(JobState.COMMITTED)
    with pytest.raises(AssertionError, match="COMMITTED -> WRITING"):
        job.to(JobState.WRITING)  # a committed job is never written again


def test_decode_without_labels_parses_each_new_entry_once_and_refuses_a_bad_one():
    from dataclasses import replace

    from proto import codec

    labelled = [replace(g, labels={"job": "dcgm", "Hostname": g.hostname}) for g in (A, B)]
    first = batch([labelled[0]], ["m"], [(0, 0, S)])
    twice = batch([labelled[1], labelled[0], labelled[1]], ["m"], [(0, 0, S), (2, 0, 2 * S)])
    one = codec.decode(codec.encode(first), labels=False)
    both = codec.decode(codec.encode(twice), labels=False)
    assert both.gpus == [B, A, B] and both.gpus[0] is both.gpus[2] and both.gpus[1] is one.gpus[0]
    assert points(both) == [("GPU-b", "m", S), ("GPU-b", "m", 2 * S)]
    bad_utf8 = b"\x0a\x04\x0a\x02\xff\xfe"  # one GPU entry whose uuid is not UTF-8
    with pytest.raises(codec.CodecError, match="not a telemetry batch"):
        codec.decode(bad_utf8 + codec.encode(first), labels=False)
