"""The streaming loop: scans of the CSV, the rows of the owned partitions, into the producer.

One `Streamer` per process. Its thread (the caller of `run`) follows the producer group
(`Ownership.reconcile`, between blocks), reads the source one *scan* (a pass over the
file, `streamer.scan`) at a time, and hands each owned partition's rows to the producer
in batches of `--batch-size` (one encoded batch each: one publish, one broker group
commit, one delivery). Progress is committed after acknowledgements.

Slow start: the first read of a file is the slow one (the first row of each GPU parses
its labels; a real export's first tens of thousands of rows are all new GPUs), and with
16 partitions a full batch of each would wait for ~16 x `--batch-size` rows. So on the
first scan each partition's first batch is 1/8 of `--batch-size` and every next one twice
the last: publishing starts within the first block of rows, the collectors start storing
while the streamer still parses, and from the fourth batch on every batch is full. Later
scans (passes from the cache, or a file read again) send full batches from the start.

Progress and passes: a partition's progress is the number of its rows acknowledged
across passes (`streamer.ownership`); with `n` rows of it in the file, progress `P` means
pass `P // n`, next row `P % n`. A scan visits every partition's rows in file order, so
a partition takes part in a scan when its next row is still ahead of the scan: at the
start of a scan, or later if none of its rows has gone by yet. `n` is known after the
first complete scan; until then, the position is the progress itself (a restarted
streamer whose partition is past its first pass sends nothing for it in that scan and
resumes at the exact row in the next).

Time (`--time`): `processing` (default) stamps each point with the time it is sent;
`source` with the CSV's own timestamp (importing a historical export). Either way, the
points of one source row group (one CSV timestamp, i.e. one scrape) share one
timestamp: in processing mode the first batch that sends a row of the group takes a
stamp (strictly increasing in the process) and the rest of the group gets the same.

When is the job finished (`--passes K`)? A partition is done when its committed
progress is K x its rows. A streamer whose own partitions are all done stays in the
group (ready to take over the partitions of a streamer that stops) until the group's
committed progress of EVERY partition of the topic has reached K x that partition's
rows (`StreamMember.progress`: the Admin service's DescribeGroup on walbroker; on Kafka,
where one streamer owns every partition, its own committed transactions); then it leaves
and exits 0. So all streamers of a finished job exit, and none exits while some GPU still has rows
to send. All streamers of a group must read the same CSV, unchanged while they run.
`--forever` never finishes.

Pacing: `--rate` is rows per second of this process (a token bucket granting whole
batches); `--pass-interval` starts passes on a wall-clock grid (multiples of the
interval since the epoch, `PassClock`), so every streamer — including one that took the
partition over a moment ago — agrees when a partition's next pass may start: at most
one pass per partition per interval, also across restarts and rebalances. Rejected rows
are counted (and logged once per reason) after each complete scan that sent rows, or
that found no usable row at all.

Shutdown (`stop`, e.g. on SIGTERM): stop reading, send the rows already taken from
the scan, wait for their acknowledgement, commit progress, leave the group.
"""

from __future__ import annotations

import logging
import time
from array import array
from collections.abc import Callable

from streamer.config import StreamerConfig
from streamer.encode import encode_rows
from streamer.member import ProducingMember
from streamer.metrics import StreamerMetrics
from streamer.ownership import PartitionState
from streamer.pacing import PassGrid, TokenBucket
from streamer.scan import CsvScanner
from streamer.source import PartRows, RowBlock, record_pass
from walbroker.errors import BrokerError
from walbroker.types import partition_for_key

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.2
FINISH_CHECK_S = 0.5
STAMP_CACHE_MAX = 100_000  # source times remembered per scan (processing-time stamps)
# On the first read of a file, a partition's first batch is --batch-size / this, and each
# next one twice the last (4 batches to full size).
FIRST_BATCH_DIVISOR = 8


class _Scan:
    """The state of one scan: partitions taking part, rows of each gone by, pending rows."""

    def __init__(self, partitions: int) -> None:
        self.taking: set[int] = set()
        self.joined: dict[int, PartitionState] = {}  # the state each partition took part under
        self.seen = [0] * partitions  # rows of each partition the scan has gone past
        self.sent: set[int] = set()  # partitions that sent rows in this scan
        self.pending: dict[int, PartRows] = {}
        self.stamps: dict[int, int] = {}  # source time -> processing time (one per row group)
        self.stamp_limit = STAMP_CACHE_MAX  # entries before the stamps no pending row needs go
        self.sizes: dict[int, int] = {}  # the next batch size of partitions still ramping up


class Streamer(ProducingMember):
    """Streams a DCGM CSV into a topic as one member of a producer group."""

    def __init__(
        self,
        config: StreamerConfig,
        metrics: StreamerMetrics,
        time_ns: Callable[[], int] = time.time_ns,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(config, metrics)
        self.time_ns = time_ns
        self.source: CsvScanner | None = None
        self.grid = PassGrid(config.pass_interval_s, wall_clock)
        self._bucket = (
            TokenBucket(config.rate_rows_per_s) if config.rate_rows_per_s is not None else None
        )
        self._last_ns = 0
        self._sent_rows = 0  # by this process: 0 at the end means the group had it all done
        self._next_commit = 0.0

    def _connected(self, partitions: int) -> None:
        """Open the source: GPUs are routed to partitions by their uuid."""
        self.source = CsvScanner(
            self.config.csv,
            partitions,
            lambda uuid: partition_for_key(uuid, partitions),
            self.config.source_cache_bytes,
        )
        log.info(
            "streaming",
            extra={
                "topic": self.config.topic, "group": self.config.group,
                "partitions": partitions, "source": self.config.csv,
                "time": self.config.time_mode, "passes": self.config.passes or "forever",
            },
        )  # fmt: skip

    # ---- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        next_finish_check = 0.0
        while not self._stop.is_set():
            if self.member.failure is not None:
                raise self.member.failure  # credentials refused, or its io loop crashed
            self._follow_group()
            sent = self._scan() if self.own.connected else 0
            self._sent_rows += sent
            if sent or self._stop.is_set():
                continue
            now = time.monotonic()
            if now >= next_finish_check:
                next_finish_check = now + FINISH_CHECK_S
                if self._finished():
                    log.info("every partition is done; leaving the group")
                    if not self._sent_rows and self._usable_rows():
                        self._warn_nothing_sent()  # (no usable row: the rejections said why)
                    return
            self._wake.wait(self._idle_wait_s())
            self._wake.clear()

    def _usable_rows(self) -> bool:
        """True when the file has a row to send (known after the first complete scan)."""
        sizes = self.source.sizes if self.source is not None else None
        return bool(sizes and any(sizes))

    def _warn_nothing_sent(self) -> None:
        """The group's committed progress had every pass done before this process sent a row:
        a restart of a finished job, or progress from another file (it counts rows, so a new
        file under an old group resumes at the old counts; see the module docstring)."""
        group = self.config.group
        log.warning(
            "nothing sent: the group's committed progress already covers every pass; if it "
            f"comes from another CSV, `walbroker admin delete-group {group}` starts it over "
            "(`gputel-admin` on Kafka)",
            extra={"group": group, "source": self.config.csv, "passes": self.config.passes},
        )

    def _follow_group(self) -> None:
        """Apply the group's assignment and commit acknowledged progress when due."""
        self.own.reconcile()
        self.metrics.partitions_owned.set(len(self.own.active))
        now = time.monotonic()
        if self.own.connected and now >= self._next_commit:
            self.own.commit()
            self._next_commit = now + self.config.commit_interval_s

    # ---- one scan ------------------------------------------------------------------------------

    def _scan(self) -> int:
        """Read the source once, sending the rows of every partition taking part; rows sent."""
        assert self.source is not None
        scan = _Scan(self.source.partitions)
        if self.source.sizes is None:  # the first read of the file: batches ramp up
            first = max(1, self.config.batch_size // FIRST_BATCH_DIVISOR)
            scan.sizes = dict.fromkeys(range(self.source.partitions), first)
        for p in self.own.active:
            if self._due(p):
                scan.taking.add(p)
                scan.joined[p] = self.own.states[p]
        if not scan.taking and self.source.sizes is not None:
            return 0  # (before the first complete scan, scan anyway: it counts the rows)
        total = 0
        complete = True
        for block in self.source.scan():
            if self._stop.is_set():
                complete = False
                break
            self._follow_group()
            self._join(scan)
            total += self._take_block(scan, block)
        total += self._flush_scan(scan, everything=True)
        if complete:
            self._scan_done(scan)
        return total

    def _join(self, scan: _Scan) -> None:
        """Drop partitions the group took away; let in those whose next row is ahead.

        A partition taken again mid-scan (e.g. the broker restarted and granted it anew)
        restarts from its committed progress, which may lie behind the rows this scan has
        gone past: it leaves the scan like a revoked one and comes back only if its next
        row is still ahead (else the next scan sends it from that exact row).
        """
        states = self.own.states
        scan.taking = {p for p in scan.taking if states.get(p) is scan.joined[p]} & self.own.active
        for p in list(scan.pending):
            if p not in scan.taking:
                del scan.pending[p]  # never handed to the producer: the owner sends them again
        for p in self.own.active - scan.taking:
            scan.sent.discard(p)  # rows sent under a former grant complete no pass of this one
            if scan.seen[p] <= self._position(p) and self._due(p):
                scan.taking.add(p)
                scan.joined[p] = states[p]

    def _take_block(self, scan: _Scan, block: RowBlock) -> int:
        """Move the block's rows of the partitions taking part to their pending batches."""
        for p, part in enumerate(block.parts):
            k = len(part)
            if not k:
                continue
            seen = scan.seen[p]
            scan.seen[p] = seen + k
            if p not in scan.taking:
                continue
            st = self.own.states[p]
            lo = self._position(p) - seen
            if lo >= k:
                continue
            lo = max(lo, 0)
            hi = min(k, lo + self._rows_left(st))
            if hi <= lo:
                continue
            if lo + seen == 0:
                st.slot = self.grid.slot(st.next_pass_at or 0.0)  # a pass starts
            _extend(scan.pending.setdefault(p, PartRows()), part, lo, hi)
            st.sent += hi - lo
            scan.sent.add(p)
        return self._flush_scan(scan, everything=False)

    def _flush_scan(self, scan: _Scan, everything: bool) -> int:
        """Send the pending rows of each partition in full batches (all of them if asked).

        A batch is `--batch-size` rows, but while the file is read for the first time each
        partition starts small (`FIRST_BATCH_DIVISOR`) and doubles: see the module docstring.
        Rows not handed over (stopping under backpressure) stay pending, and nothing after
        them in their partition is sent: a later batch acknowledged first would be counted
        as their progress, skipping them and sending its own rows twice.
        """
        total = 0
        for p, rows in list(scan.pending.items()):
            n = len(rows)
            start = 0
            size = scan.sizes.get(p, self.config.batch_size)
            while n - start >= size or (everything and start < n):
                end = min(n, start + size)
                sent = self._send(scan, p, rows, start, end)
                total += sent
                if sent < end - start:
                    start += sent
                    break
                start = end
                if p in scan.sizes:
                    size = scan.sizes[p] = min(2 * size, self.config.batch_size)
            if start:
                rest = PartRows()
                _extend(rest, rows, start, n)
                scan.pending[p] = rest
        return total

    def _send(self, scan: _Scan, p: int, rows: PartRows, start: int, end: int) -> int:
        """Hand rows [start, end) of `p` to the producer under `--rate`; return how many it
        took (fewer only when stopping). Paced before the rows are stamped: a processing
        time is when the row goes to the producer."""
        self._pace(end - start)
        return self._send_rows(scan, p, rows, start, end)

    def _send_rows(self, scan: _Scan, p: int, rows: PartRows, start: int, end: int) -> int:
        """Stamp, encode and publish rows [start, end) of `p`; return how many went.

        A batch whose encoding is over the producer's byte limit (GPUs with large labels:
        each GPU of a batch carries its labels once) is sent as two halves, in order, cut
        again until each fits; the rows and their order are the same, so the progress the
        acknowledgements add up to is too. A half not handed over (stopping) ends the run:
        nothing after it may be sent before it.
        """
        assert self.source is not None
        sources = rows.source_time_ns[start:end]
        times = sources if self.config.time_mode == "source" else self._stamps(scan, sources)
        payload = encode_rows(
            self.source.table, self.source.metrics, rows.gpu[start:end],
            rows.metric[start:end], times, rows.value[start:end], sources,
        )  # fmt: skip
        if len(payload) > self.producer.max_batch_bytes and end - start > 1:
            mid = (start + end) // 2
            sent = self._send_rows(scan, p, rows, start, mid)
            return sent if sent < mid - start else sent + self._send_rows(scan, p, rows, mid, end)
        return self._publish(p, payload, end - start)

    def _publish(self, p: int, payload: bytes, count: int) -> int:
        """Publish one encoded batch; return `count`, or 0 when stopping."""
        while True:
            try:
                self.producer.send_batch(p, payload, count, 1.0)
                return count
            except TimeoutError:  # backpressure: the pending bound is reached
                if self._stop.is_set():
                    # Never handed over, never acknowledged: the committed progress stays
                    # before these rows, so whoever streams `p` next sends them.
                    return 0

    def _stamps(self, scan: _Scan, sources: array[int]) -> list[int]:
        """Processing times of rows: one per source time (row group) per scan, increasing.

        Bounded: past STAMP_CACHE_MAX source times, only the stamps of rows still pending
        in some partition are kept, and the newest (its group may go on in the next block):
        forgetting one would give its row group a second stamp when the rest of it is sent.
        A row read later with a forgotten source time (a file not in time order) gets a new
        stamp.
        """
        stamps = scan.stamps
        if len(stamps) > scan.stamp_limit:
            needed = set(sources)
            needed.add(max(stamps))
            for rows in scan.pending.values():
                needed.update(rows.source_time_ns)
            scan.stamps = stamps = {s: t for s, t in stamps.items() if s in needed}
            scan.stamp_limit = max(STAMP_CACHE_MAX, 2 * len(stamps))  # no pass per batch
        for s in set(sources).difference(stamps):
            stamps[s] = self._last_ns = max(self.time_ns(), self._last_ns + 1)
        return [stamps[s] for s in sources]

    def _pace(self, count: int) -> None:
        """Wait for `count` rows' worth of tokens under `--rate` (not at all when stopping)."""
        bucket = self._bucket
        while bucket is not None and count > 0 and not self._stop.is_set():
            count -= bucket.take(count, self._stop)

    def _scan_done(self, scan: _Scan) -> None:
        """After a complete scan: passes completed, rejected rows counted."""
        assert self.source is not None and self.source.sizes is not None
        sizes = self.source.sizes
        for p in scan.sent & self.own.active:
            st = self.own.states[p]
            if sizes[p] and st.sent % sizes[p] == 0:
                self.metrics.passes_completed.inc()
                st.next_pass_at = self.grid.next_start(st.slot)
        # A file without a usable row is read once: its rejections say why nothing is sent.
        if (scan.sent or not any(sizes)) and self.source.report is not None:
            record_pass(self.source.report, self.metrics, self.source.scans)

    # ---- positions -----------------------------------------------------------------------------

    def _size(self, p: int) -> int | None:
        """Rows of `p` in one pass (None until the first complete scan)."""
        sizes = self.source.sizes if self.source is not None else None
        return None if sizes is None else sizes[p]

    def _position(self, p: int) -> int:
        """The next row of `p` within its pass (the progress itself before sizes are known)."""
        sent, n = self.own.states[p].sent, self._size(p)
        return sent if n is None else (sent % n if n else 0)

    def _rows_left(self, st: PartitionState) -> int:
        """Rows still to send for the partition (unbounded when streaming forever)."""
        n, passes = self._size(st.partition), self.config.passes
        if passes is None or n is None:
            return 1 << 62
        return max(0, passes * n - st.sent)

    def _due(self, p: int) -> bool:
        """True when `p` has rows to send now: mid-pass, or its next pass may start."""
        st = self.own.states[p]
        n = self._size(p)
        if n is None:
            return True  # the first scan: it tells where the partition stands
        if not n or not self._rows_left(st):
            return False
        if st.sent % n:
            return True
        if st.next_pass_at is None:  # just taken at a pass boundary
            st.next_pass_at = 0.0 if st.sent == 0 else self.grid.after_handover()
        return self.grid.due(st.next_pass_at)

    def _idle_wait_s(self) -> float:
        """How long to sleep when nothing was due: until the next pass starts, at most 0.2 s."""
        now = self.grid.clock()
        waits = [
            st.next_pass_at - now
            for st in (self.own.states[p] for p in self.own.active)
            if st.next_pass_at is not None and st.next_pass_at > now
        ]
        return max(0.0, min([IDLE_WAIT_S, *waits]))

    # ---- finishing ---------------------------------------------------------------------------

    def _finished(self) -> bool:
        """True when --passes K is reached by every partition of the topic (see module doc)."""
        passes = self.config.passes
        sizes = self.source.sizes if self.source is not None else None
        if sizes is None or passes is None or not self.own.connected or not self.own.settled:
            return False
        for p in self.own.active:
            if self.own.states[p].committed < passes * sizes[p]:
                return False
        try:
            committed = self.member.progress()
        except BrokerError as exc:
            log.info("group progress unavailable", extra={"reason": str(exc)})
            return False
        return all(committed.get(p, 0) >= passes * n for p, n in enumerate(sizes))


def _extend(into: PartRows, rows: PartRows, start: int, end: int) -> None:
    """Append rows [start, end) of `rows` to `into`."""
    into.gpu.extend(rows.gpu[start:end])
    into.metric.extend(rows.metric[start:end])
    into.value.extend(rows.value[start:end])
    into.source_time_ns.extend(rows.source_time_ns[start:end])
