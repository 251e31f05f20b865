"""Consumers that take without giving back: commits whose answers are never read."""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import grpc

from proto.gen import walbroker_pb2 as pb
from proto.gen import walbroker_pb2_grpc as pb_grpc
from tests.hostile.support import GoodClient, assert_unaffected, rss_bytes, scrape
from walbroker.client import channel

MiB = 1024 * 1024
QUEUE_BOUND = 256 * 1024
COMMITS = 20_000


def _commits_never_read(address: str, seconds: float, out: Any) -> None:
    """The hostile client (own process): commits of 512 partitions, its stream never read.

    The generation is stale, so each answer echoes its 512 offsets (~4 KiB). It counts
    what it managed to send while not reading, then reads what it was sent.
    """
    sent = [0]
    commit = pb.ConsumeRequest(
        commit=pb.Commit(
            commit_id=1,
            generation=1_000_000,
            offsets=[pb.PartitionOffset(partition=p, offset=0) for p in range(512)],
        )
    )

    def requests() -> Any:
        yield pb.ConsumeRequest(
            join=pb.Join(group="flood", topic="wide", role=pb.CONSUMER, session_timeout_ms=60_000)
        )
        for _ in range(COMMITS):
            yield commit
            sent[0] += 1

    with channel(address) as ch:
        call = pb_grpc.BrokerStub(ch).Consume(requests(), timeout=120)
        time.sleep(seconds)
        sent_unread = sent[0]
        read, code, details = 0, "OK", ""
        try:
            for _ in call:
                read += 1
        except grpc.RpcError as exc:
            code, details = exc.code().name, exc.details() or ""
    out.put((sent_unread, read, code, details))


def test_commits_never_read_end_the_stream_and_the_broker_stops_reading(hostile_broker):
    """A member that commits but never reads its stream once grew the broker without limit

    (+1.2 GiB in 34 s: every commit's answer was queued for it). Now its answers are
    bounded by --max-consume-queue-bytes: past it the stream ends RESOURCE_EXHAUSTED
    naming the flag, the broker stops reading it (gRPC flow control holds the client),
    its memory stays flat, and a well-behaved producer and consumer carry on.
    """
    broker = hostile_broker("--topic", "wide:512", "--max-consume-queue-bytes", str(QUEUE_BOUND))
    assert broker.proc is not None
    good = GoodClient(broker.address)
    baseline = good.baseline(1.5)
    rss0 = rss_bytes(broker.proc.pid)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    hostile = ctx.Process(target=_commits_never_read, args=(broker.address, 12.0, out))
    hostile.start()
    time.sleep(2.0)  # the flood is under way
    assert_unaffected(baseline, lambda: good.publish_for(1.5))
    growth = rss_bytes(broker.proc.pid) - rss0
    sent_unread, read, code, details = out.get(timeout=120)
    hostile.join(30)
    # Before: all 20,000 commits were read and ~4 KiB answered each, held for the client.
    # How many the client's gRPC took from its iterator is no measure of what the broker read:
    # once the broker ends the stream the client library drains the rest at once (so it did in
    # about half the runs). The broker's memory and its refusal are the measure.
    assert 0 < sent_unread <= COMMITS
    assert growth < 64 * MiB, f"broker RSS grew {growth / MiB:.0f} MiB"
    assert code == "RESOURCE_EXHAUSTED", (code, details, read)
    assert "--max-consume-queue-bytes" in details
    assert read < sent_unread  # answers were dropped, not all sent once it read
    refused = "gpu_telemetry_broker_refused_calls_total"
    assert scrape(broker.metrics_url, refused, limit="max_consume_queue_bytes") == 1
    assert scrape(broker.metrics_url, "gpu_telemetry_broker_consume_queue_bytes") == 0
    good.assert_nothing_lost()  # its verifying consumer reads every point
