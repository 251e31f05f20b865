"""Chunks: a partition's rows encoded as one batch, the untimed encoding cached across passes."""

from __future__ import annotations

import io

from proto.codec import decode
from streamer.chunks import ChunkEncoder
from streamer.plan import PartitionPlan
from streamer.source import SourceRows, parse_csv
from tests.streamer.dcgm_fixture import csv_text, labels_raw, row

PARTITIONS = 4
Expected = tuple[str, str, float, int]  # uuid, metric, value, source_time_ns


def sample_rows() -> SourceRows:
    """12 GPUs x 3 metrics x 2 scrapes, with a rejected row between every few good ones."""
    rows = []
    for scrape, ts in enumerate(("2025-07-18T20:42:30Z", "2025-07-18T20:43:00Z")):
        for g in range(12):
            uuid, host, gpu = f"GPU-{g:04d}", f"h{g // 4}", str(g % 4)
            for m in range(3):
                rows.append(
                    row(
                        timestamp=ts, metric_name=f"M{m}", gpu_id=gpu, uuid=uuid, Hostname=host,
                        value=str(scrape * 100 + g * 10 + m),
                        labels_raw=labels_raw(uuid, host, gpu),
                    )
                )  # fmt: skip
            rows.append(row(gpu_id="", uuid=uuid))  # rejected: missing gpu_id
    return parse_csv(io.StringIO(csv_text(rows), newline=""))


def expected(rows: SourceRows, plan: PartitionPlan, p: int) -> list[Expected]:
    """The points of partition `p`'s pass, in file order, as the rows say."""
    return [
        (rows.gpus[rows.gpu[r]].uuid, rows.metrics[rows.metric[r]], rows.value[r],
         rows.source_time_ns[r])
        for r in plan.rows_of(p)
    ]  # fmt: skip


def stream_pass(
    enc: ChunkEncoder, plan: PartitionPlan, p: int, chunk: int, first_ns: int, start: int = 0
) -> tuple[list[Expected], list[int]]:
    """Encode partition `p` from row `start` to the end of its pass in chunks; decode them."""
    points: list[Expected] = []
    times: list[int] = []
    n = plan.size(p)
    while start < n:
        end = min(start + chunk, n)
        batch = decode(enc.encode(p, start, end, first_ns))
        assert len(batch) == end - start
        points += [(q.gpu.uuid, q.metric, q.value, q.source_time_ns) for q in batch.points()]
        times += batch.time_ns
        first_ns += end - start
        start = end
    return points, times


def test_every_pass_decodes_to_the_partitions_rows_in_order_with_fresh_times() -> None:
    rows = sample_rows()
    assert rows.report.rows_rejected == 24 and len(rows) == 72
    plan = PartitionPlan(rows, PARTITIONS)
    enc = ChunkEncoder(rows, plan, max_cache_bytes=1 << 20)
    chunks_per_pass = sum(-(-plan.size(p) // 5) for p in range(PARTITIONS))
    for k in range(3):
        for p in range(PARTITIONS):
            first = 10**18 + k * 10**9 + p * 10**6
            points, times = stream_pass(enc, plan, p, 5, first)
            assert points == expected(rows, plan, p)  # nothing lost, repeated or reordered
            assert times == list(range(first, first + plan.size(p)))
    assert enc.misses == chunks_per_pass  # encoded once ...
    assert enc.hits == 2 * chunks_per_pass  # ... and reused by the later passes


def test_a_pass_resumed_mid_chunk_is_exact_and_later_passes_realign() -> None:
    rows = sample_rows()
    plan = PartitionPlan(rows, PARTITIONS)
    enc = ChunkEncoder(rows, plan, max_cache_bytes=1 << 20)
    p = max(range(PARTITIONS), key=plan.size)
    points, _ = stream_pass(enc, plan, p, 5, 1, start=3)  # a new owner resumes at row 3
    assert points == expected(rows, plan, p)[3:]
    for _ in range(2):
        points, _ = stream_pass(enc, plan, p, 5, 1)
        assert points == expected(rows, plan, p)


def test_the_cache_stays_within_its_budget_and_output_does_not_depend_on_it() -> None:
    rows = sample_rows()
    plan = PartitionPlan(rows, PARTITIONS)
    encoders = {
        budget: ChunkEncoder(rows, plan, max_cache_bytes=budget) for budget in (0, 700, 1 << 20)
    }
    for _ in range(2):
        for p in range(PARTITIONS):
            outputs = {
                budget: [enc.encode(p, s, min(s + 4, plan.size(p)), 7)
                         for s in range(0, plan.size(p), 4)]
                for budget, enc in encoders.items()
            }  # fmt: skip
            assert outputs[0] == outputs[700] == outputs[1 << 20]
    for budget, enc in encoders.items():
        assert enc.cached_bytes <= budget
    assert encoders[0].hits == 0
    assert 0 < encoders[700].hits < encoders[1 << 20].hits
