"""Scrape mode: live dcgm-exporter targets, each scraped by exactly one live streamer.

Targets come from `streamer.targets` (URLs, file_sd, DNS). A target belongs to a partition
(`partition_for_key(url)`), and the producer group gives each streamer a share of the
partitions, so each target is scraped by the one streamer that owns its partition — the
same cooperative handover and epoch fencing as the CSV mode (`streamer.ownership`): a
streamer that loses a partition stops scheduling its targets, flushes, and releases it;
one that is killed is fenced once its session timeout gives the partition away, so a
scrape is stored at most once. A target's points go to its partition (a GPU is on one
target, so its points stay in order).

Schedule: target T is scraped at ticks `k x interval + offset(T)` of the wall clock
(offset: a hash of the URL, spreading targets over the interval). Every streamer uses the
same ticks, so a target that moves continues its rhythm: the gap in its series is at most
one interval plus the scrape timeout on a cooperative handover, plus the session timeout
when its streamer died. A tick is skipped (counted) while the target's previous scrape is
still running.

Concurrency: the due scrapes of a loop turn go to the fetcher (`streamer.scraper`: one
thread, an asyncio loop, kept-alive connections) at once; at most `--scrape-concurrency`
are in flight, each bounded by `--scrape-timeout-s`; a dead or hanging target holds one
slot for at most the timeout and never delays the others. Parsing and publishing happen
on the loop's thread (one `GpuTable`, one producer caller). All samples of one scrape
share one timestamp: the exporter's own sample time when it gives one (the newest), else
the scrape's start; it is the points' time and source time.

On Kafka (`--broker kafka://…`) there is no producer group: one streamer per `--group` owns
every partition and so scrapes every target it is given (`gputel.transport.kafka_stream`),
and a second one with the same group fences the first. Shard a large fleet by giving each
streamer its own targets (file_sd file, DNS name) and its own `--group`.
"""

from __future__ import annotations

import logging
import math
import queue
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from streamer.config import StreamerConfig
from streamer.encode import encode_rows
from streamer.exposition import Key, PageReader, SampleReject, label_map
from streamer.gpus import GpuTable, Unusable, describe_gpu
from streamer.labels import LabelsError
from streamer.member import ProducingMember
from streamer.metrics import ScrapeMetrics, StreamerMetrics
from streamer.ownership import PartitionState
from streamer.rows import METRIC_NAME
from streamer.scraper import Fetcher, OnDone, Outcome
from streamer.targets import TargetSet
from walbroker.types import partition_for_key

log = logging.getLogger(__name__)

MAX_WAIT_S = 0.05
# The loop sleeps at least this long between rounds: each round walks every target, and with
# a thousand targets spread over the interval a tick is always due within a millisecond.
MIN_WAIT_S = 0.01
_BAD_LABELS, _NO_GPU = -1, -2
_GPU_REJECT = {
    _BAD_LABELS: SampleReject.BAD_LABELS,
    Unusable.BAD_GPU_FIELD: SampleReject.BAD_GPU_FIELD,
    Unusable.BAD_ENCODING: SampleReject.BAD_ENCODING,
    Unusable.BAD_UUID: SampleReject.BAD_UUID,
}
LABEL_CACHE_MAX = 10_000  # label texts remembered per target


@dataclass(eq=False)
class Target:
    """One scrape target as the scheduler sees it."""

    url: str
    partition: int
    offset_s: float
    next_tick: float | None = None
    busy: bool = False
    grant: PartitionState | None = None  # the grant its next scrape is published under
    gpu_of: dict[str, int] = field(default_factory=dict)  # label text -> GPU ordinal
    reader: PageReader | None = None  # its pages' lines seen before (the parser's fast path)


@dataclass(slots=True)
class _Pending:
    """Rows of one partition's finished scrapes, on their way into one batch."""

    grant: PartitionState
    since: float = field(default_factory=time.monotonic)  # when its first scrape finished
    gpus: list[int] = field(default_factory=list)
    metrics: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    times: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Done:
    """A finished scrape, handed from the fetcher's thread to the loop."""

    target: Target
    grant: PartitionState
    tick: float
    outcome: Outcome


class ScrapeStreamer(ProducingMember):
    """Scrapes the targets of the partitions this streamer owns and publishes the samples."""

    def __init__(
        self,
        config: StreamerConfig,
        metrics: StreamerMetrics,
        scrape_metrics: ScrapeMetrics,
        targets: TargetSet | None = None,
    ) -> None:
        super().__init__(config, metrics)
        self.sm = scrape_metrics
        self.targets = targets or TargetSet(
            config.scrape, config.targets_file, config.targets_dns,
            on_error=lambda source, reason: scrape_metrics.errors.labels(source, reason).inc(),
        )  # fmt: skip
        self._fresh_series()
        self._targets: dict[str, Target] = {}
        self._done: queue.SimpleQueue[_Done] = queue.SimpleQueue()
        self._pending: dict[int, _Pending] = {}  # lingering rows by partition (loop thread)
        self._fetcher = Fetcher(config.scrape_timeout_s, config.scrape_concurrency)
        self._partitions = 0

    def _connected(self, partitions: int) -> None:
        """Targets are routed to partitions by their URL."""
        self._partitions = partitions
        self._fetcher.start()
        log.info("scraping", extra={
            "topic": self.config.topic, "group": self.config.group,
            "interval_s": self.config.scrape_interval_s,
            "timeout_s": self.config.scrape_timeout_s,
            "concurrency": self.config.scrape_concurrency,
        })  # fmt: skip

    def _closing(self) -> None:
        """No new scrapes (those in flight are aborted); the finished ones are taken, the
        final flush publishes them."""
        self._fetcher.close()
        self._publish_done()

    def _release(self) -> None:
        """Stop the fetcher: abort its scrapes, close every target connection."""
        self._fetcher.close()

    # ---- the loop ----------------------------------------------------------------------------

    def _loop(self) -> None:
        next_refresh = next_commit = 0.0
        while not self._stop.is_set():
            if self.member.failure is not None:
                raise self.member.failure
            if not self._fetcher.alive():
                raise RuntimeError("the scrape fetcher's thread ended")
            self.own.reconcile()
            self.metrics.partitions_owned.set(len(self.own.active))
            now = time.time()
            if now >= next_refresh:
                self._discover()
                next_refresh = now + self.config.scrape_interval_s
            soonest = self._schedule(now)
            self._publish_done()
            if self.own.connected and time.monotonic() >= next_commit:
                self.own.commit()
                next_commit = time.monotonic() + self.config.commit_interval_s
            self._wake.wait(min(MAX_WAIT_S, max(MIN_WAIT_S, soonest - time.time())))
            self._wake.clear()

    def _discover(self) -> None:
        """Refresh the target set; keep the state of targets that stay."""
        urls = self.targets.refresh()
        interval = self.config.scrape_interval_s
        fresh: dict[str, Target] = {}
        for url in urls:
            t = self._targets.get(url)
            if t is None:
                offset = (zlib.crc32(url.encode()) % 10_000) / 10_000 * interval
                t = Target(url, partition_for_key(url, self._partitions), offset)
                t.reader = PageReader(self._resolver(t), LABEL_CACHE_MAX)
            fresh[url] = t
        for url in set(self._targets) - set(fresh):
            self.sm.forget(url)
        self._targets = fresh
        self._fetcher.forget({url for url, t in fresh.items() if t.grant is not None})
        self.sm.targets.labels("known").set(len(fresh))

    def _schedule(self, now: float) -> float:
        """Start every owned target's scrape that is due; return the next due tick."""
        soonest = now + MAX_WAIT_S
        owned = 0
        due: list[tuple[str, OnDone]] = []
        active, states = self.own.active, self.own.states
        for t in self._targets.values():
            grant = states.get(t.partition) if t.partition in active else None
            if grant is None:
                if t.grant is not None:  # moved away: its series belong to the new owner
                    t.grant, t.next_tick = None, None
                    self.sm.forget(t.url)
                continue
            owned += 1
            if grant is not t.grant:  # taken (again): continue the shared rhythm
                t.grant, t.next_tick = grant, self._tick_after(t, now)
            assert t.next_tick is not None
            if now >= t.next_tick:
                tick, t.next_tick = t.next_tick, self._tick_after(t, now)
                missed = round((t.next_tick - tick) / self.config.scrape_interval_s) - 1
                if missed > 0:  # the loop was late: ticks passed unscraped, counted as such
                    self.sm.skipped.labels(t.url, "late").inc(missed)
                if t.busy:
                    self.sm.skipped.labels(t.url, "busy").inc()
                else:
                    t.busy = True
                    due.append((t.url, self._on_done(t, grant, tick)))
            soonest = min(soonest, t.next_tick)
        self._fetcher.submit(due)  # one hand-over per loop turn, not one per scrape
        self.sm.targets.labels("owned").set(owned)
        return soonest

    def _tick_after(self, t: Target, now: float) -> float:
        """The target's first tick strictly after `now`."""
        interval = self.config.scrape_interval_s
        return (math.floor((now - t.offset_s) / interval) + 1) * interval + t.offset_s

    def _on_done(self, t: Target, grant: PartitionState, tick: float) -> OnDone:
        """What the fetcher's thread does when the scrape ends: observe, hand it to the loop."""

        def done(outcome: Outcome) -> None:
            self.sm.scrape_lag.observe(max(0.0, outcome.started_ns / 1e9 - tick))
            self.sm.scrape_seconds.observe(outcome.duration_s)
            self._done.put(_Done(t, grant, tick, outcome))  # taken within MAX_WAIT_S

        return done

    # ---- publishing --------------------------------------------------------------------------

    def _publish_done(self) -> None:
        """Take every finished scrape whose partition is still held under the same grant.

        Rows wait per partition (`_Pending`) until `--batch-size` is reached (cut at whole
        scrapes) or the oldest waited `--scrape-linger-ms`: one batch per partition per
        linger, so a thousand targets a second make tens of broker records, not a thousand.
        """
        while True:
            try:
                d = self._done.get_nowait()
            except queue.Empty:
                break
            d.target.busy = False
            if self._targets.get(d.target.url) is not d.target:
                # Removed while its scrape ran: `_discover` forgot its series, and publishing
                # them again would show a target that is gone (up=0) forever.
                continue
            p = d.target.partition
            if p not in self.own.active or self.own.states.get(p) is not d.grant:
                continue  # the partition moved meanwhile: the new owner scrapes it
            error = d.outcome.error
            if error is not None:
                self.sm.up.labels(d.target.url).set(0)
                self.sm.errors.labels(d.target.url, error.reason).inc()
                log.debug("scrape failed", extra={"target": d.target.url, "reason": str(error)})
                continue
            self._take_page(p, d)
        linger_s = self.config.scrape_linger_ms / 1000
        now = time.monotonic()
        for p, batch in list(self._pending.items()):
            if now - batch.since >= linger_s:
                self._send(p, self._pending.pop(p))
        self._bound_series()

    def _fresh_series(self) -> None:
        """Empty GPU table and metric names (at start, and past --scrape-max-series)."""
        self.table = GpuTable(lambda _uuid: 0)  # partitions follow targets, not GPUs
        self.metric_names: list[str] = []
        self._metric: dict[str, int] = {}  # name -> ordinal, -1 for a name refused

    def _bound_series(self) -> None:
        """Start the GPU table and the metric names afresh once either passes the bound.

        Pending rows are sent first (their batches are encoded from the table as it is), so
        no ordinal outlives its table; scrapes finished later resolve into the new one.
        """
        gpus, metrics = len(self.table), len(self._metric)
        bound = self.config.scrape_max_series
        if gpus <= bound and metrics <= bound:
            self.sm.series.labels("gpus").set(gpus)
            self.sm.series.labels("metrics").set(metrics)
            return
        for p in list(self._pending):
            self._send(p, self._pending.pop(p))
        self._fresh_series()
        for t in self._targets.values():
            t.gpu_of.clear()
            t.reader = PageReader(self._resolver(t), LABEL_CACHE_MAX)
        self.sm.series_resets.inc()
        self.sm.series.labels("gpus").set(0)
        self.sm.series.labels("metrics").set(0)
        log.warning(
            "remembered series passed --scrape-max-series; starting afresh",
            extra={"gpus": gpus, "metric_names": metrics, "bound": bound},
        )

    def _take_page(self, p: int, d: _Done) -> None:
        """Add a scraped page's rows to its partition's pending batch (sent once full)."""
        batch = self._pending.get(p)
        if batch is None or batch.grant is not d.grant:
            batch = self._pending[p] = _Pending(d.grant)
        count = self._rows(d.target, d.outcome, batch)
        url = d.target.url
        self.sm.up.labels(url).set(1)
        self.sm.duration.labels(url).set(d.outcome.duration_s)
        self.sm.samples.labels(url).set(count)
        if len(batch.values) >= self.config.batch_size:
            self._send(p, self._pending.pop(p))

    def _flush(self, timeout_s: float) -> None:
        """Send the lingering rows of partitions still held under their grant, then flush.

        `Ownership` calls it before handing partitions back and at shutdown, so a scrape
        taken under a grant is published under it (or, if the grant moved on, not at all).
        """
        for p, batch in list(self._pending.items()):
            del self._pending[p]
            if self.own.states.get(p) is batch.grant:
                self._send(p, batch)
        self.producer.flush(timeout_s)

    def _rows(self, t: Target, outcome: Outcome, into: _Pending) -> int:
        """Append one page's samples to `into` (one timestamp for all); return how many."""
        assert t.reader is not None and outcome.text is not None
        before = len(into.values)
        newest_ms = t.reader.read(outcome.text, into.gpus, into.metrics, into.values, self._reject)
        count = self._drop_duplicates(into, before)
        # In range: `sample` refused every timestamp a point's int64 ns cannot hold.
        at = outcome.started_ns if newest_ms is None else newest_ms * 1_000_000
        into.times.extend([at] * count)
        return count

    def _drop_duplicates(self, into: _Pending, start: int) -> int:
        """Keep the first sample of each (GPU, metric) appended from `start`; count the rest.

        A page's samples share one timestamp, so a second sample of a series would overwrite
        the first in the store: refused and counted (Prometheus keeps the first too), not
        lost silently. Keyed by uuid, the store's identity, not by label set: two label
        sets of one GPU (a MIG instance label, a per-pod label) are one series there.
        Returns the samples kept.
        """
        table = self.table.gpus
        pairs = zip(into.gpus[start:], into.metrics[start:], strict=True)
        keys = [(table[g].uuid, m) for g, m in pairs]
        if len(set(keys)) == len(keys):
            return len(keys)  # the usual page: one check, nothing copied
        seen: set[tuple[str, int]] = set()
        keep: list[int] = []
        for i, key in enumerate(keys, start):
            if key in seen:
                self._reject(SampleReject.DUPLICATE_SAMPLE)
            else:
                seen.add(key)
                keep.append(i)
        gpus, metrics, values = into.gpus, into.metrics, into.values
        gpus[start:] = [gpus[i] for i in keep]
        metrics[start:] = [metrics[i] for i in keep]
        values[start:] = [values[i] for i in keep]
        return len(keep)

    def _send(self, p: int, batch: _Pending) -> None:
        """Hand one partition's rows to the producer as one batch (waits under backpressure)."""
        n = len(batch.values)
        if not n:
            return
        payload = encode_rows(
            self.table, self.metric_names, batch.gpus, batch.metrics, batch.times,
            batch.values, batch.times,
        )  # fmt: skip
        while True:  # at least one attempt, also while stopping (the final flush)
            try:
                self.producer.send_batch(p, payload, n, 1.0)
                batch.grant.sent += n
                return
            except TimeoutError:  # backpressure: the pending bound holds the batch back
                if self._stop.is_set():
                    return  # never acknowledged, so never counted: a gap, not a duplicate

    def _resolver(self, t: Target) -> Callable[[str, str], Key | SampleReject]:
        """What a sample line of target `t` stands for: its (GPU, metric) ordinals."""

        def resolve(name: str, labels: str) -> Key | SampleReject:
            g = t.gpu_of.get(labels)
            if g is None:
                g = self._gpu(t, labels)
            if g < 0:
                return _GPU_REJECT.get(g, SampleReject.NO_GPU)
            m = self._metric.get(name)
            if m is None:
                m = self._metric_ordinal(name)
            if m < 0:
                return SampleReject.BAD_METRIC_NAME
            return g, m

        return resolve

    def _metric_ordinal(self, name: str) -> int:
        """The ordinal of a metric name seen for the first time (-1: the API cannot select it)."""
        if METRIC_NAME.fullmatch(name):
            m = self._metric[name] = len(self.metric_names)
            self.metric_names.append(name)
        else:
            m = self._metric[name] = -1
        return m

    def _gpu(self, t: Target, labels: str) -> int:
        """The GPU ordinal of a label text seen for the first time on this target."""
        if len(t.gpu_of) >= LABEL_CACHE_MAX:
            t.gpu_of.clear()
        try:
            found = label_map(labels)
        except LabelsError:
            t.gpu_of[labels] = _BAD_LABELS
            return _BAD_LABELS
        index = found.get("gpu", "")
        gpu = None
        if index.isascii() and index.isdigit() and int(index) < 2**32:
            gpu = describe_gpu("", "", int(index), "", "", "", "", "", labels=found)
        t.gpu_of[labels] = g = _NO_GPU if gpu is None else self.table.intern(gpu)
        return g

    def _reject(self, reason: SampleReject) -> None:
        self.sm.rejected.labels(reason.value).inc()
