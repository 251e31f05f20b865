"""What waits for the log's writer: one FIFO of appends per client, served round-robin.

A single FIFO let one client that pipelines large batches on many streams fill it
(64 MiB, about a second of the writer's time), so every other client's batch
waited behind that backlog: a polite producer's ack took 1.1 s instead of 5 ms
(`bench/fairness_bench.py`). Now each client (the identity the per-client publish
rate uses, `walbroker.quota.client_identity`) has its own FIFO, and a group commit
takes one batch from each client in turn, up to `max_ops` operations and
`max_bytes` of payload. So a lone client still gets the whole writer, two busy
clients get about half each, and a light client's batch goes into the next group
commit whatever the others have queued (max-min fairness). Batches of one client,
hence of one stream, keep their order.

Admission is bounded in total (`max_batches`, `max_bytes`). A client that already
has batches waiting may fill only 7/8 of either bound: the last eighth is kept for
clients with nothing waiting, so a flood that keeps the queue full cannot have a
newcomer's first batch refused.

Operations other than appends (offset commits, topic changes, retention, barriers)
are few and small: they wait in a control FIFO served before the appends, unbounded
as before. A barrier ("everything queued so far is committed") is taken only once
every append queued before it has been taken.

Thread-safe: submitters (gRPC threads) call `put`, the writer thread `take`; one
condition guards all the state.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict, deque

from walbroker.errors import ResourceExhausted
from walbroker.ops import AppendOp, BarrierOp, Op

# The share of the queue's bounds a client with batches already waiting may fill.
BUSY_SHARE = 7 / 8


class WriteQueue:
    """Operations waiting for the writer (module docstring)."""

    def __init__(self, max_batches: int, max_bytes: int, retry_after_ms: int) -> None:
        self.max_batches, self.max_bytes = max_batches, max_bytes
        self.retry_after_ms = retry_after_ms
        self._cond = threading.Condition()
        self._seq = itertools.count()  # submission order, for barriers
        self._clients: OrderedDict[str, deque[tuple[int, AppendOp]]] = OrderedDict()
        self._control: deque[tuple[int, Op]] = deque()
        self.batches = 0  # appends waiting
        self.bytes = 0  # their payload bytes

    @property
    def clients(self) -> int:
        """Clients with appends waiting."""
        return len(self._clients)

    def put(self, op: Op, client: str = "") -> None:
        """Queue an operation; an append beyond the bounds is refused (ResourceExhausted)."""
        with self._cond:
            seq = next(self._seq)
            if isinstance(op, AppendOp):
                self._admit(client, len(op.payload))
                self._clients.setdefault(client, deque()).append((seq, op))
                self.batches += 1
                self.bytes += len(op.payload)
            else:
                self._control.append((seq, op))
            self._cond.notify()

    def _admit(self, client: str, size: int) -> None:
        share = BUSY_SHARE if client in self._clients else 1.0
        if self.batches < self.max_batches * share and self.bytes + size <= self.max_bytes * share:
            return
        busy = " (a client with batches waiting may fill 7/8 of it)" if share < 1 else ""
        raise ResourceExhausted(
            f"append queue is full: {self.batches} batches, {self.bytes} bytes waiting; "
            f"limits {self.max_batches} batches and {self.max_bytes} bytes "
            f"(--max-queue-bytes){busy}",
            retry_after_ms=self.retry_after_ms,
        )

    def wake(self) -> None:
        """End a `take` that is waiting (the writer is stopping)."""
        with self._cond:
            self._cond.notify_all()

    def take(self, max_ops: int, max_bytes: int, timeout_s: float) -> list[Op]:
        """The next group commit's operations (waits up to `timeout_s` for one)."""
        with self._cond:
            if not (self._control or self._clients):
                self._cond.wait(timeout_s)
            ops = self._take_control(max_ops)
            size = 0
            while self._clients and len(ops) < max_ops:
                client, waiting = next(iter(self._clients.items()))
                op = waiting[0][1]
                if size and size + len(op.payload) > max_bytes:
                    break  # the next commit starts with this client
                waiting.popleft()
                ops.append(op)
                size += len(op.payload)
                if waiting:
                    self._clients.move_to_end(client)  # its turn is over
                else:
                    del self._clients[client]
            self.batches -= sum(isinstance(op, AppendOp) for op in ops)
            self.bytes -= size
            return ops

    def _take_control(self, max_ops: int) -> list[Op]:
        ops: list[Op] = []
        while self._control and len(ops) < max_ops:
            seq, op = self._control[0]
            if isinstance(op, BarrierOp) and any(q[0][0] < seq for q in self._clients.values()):
                break  # appends queued before it are not taken yet
            self._control.popleft()
            ops.append(op)
        return ops
