"""Committed offsets and producer progress: their one owner, on disk and in memory.

Two tables share a key, (group, topic-partition), and a value, (position, commit_time_ns):

- **committed offsets** of consumer groups (sub-database ``offsets``): log offsets, the
  "next offset" a group resumes from. Lag and `block` retention read them.
- **progress** of producer groups (sub-database ``progress``): a position in the group's
  *source* (e.g. rows of a CSV), stored with every fenced batch in the same transaction.
  It is not a log offset, so nothing subtracts it from a log end offset.

Both key encodings are `group NUL topic NUL u32(partition)` (`walbroker.keys.group_key`).
The sub-database ``meta`` holds the layout version (key ``layout``, u32) and upgrade
markers (key ``legacy NUL group``, empty value), see "Upgrades" below.

Threads: only the log's writer thread changes the tables — inside its write transaction
through the ``stage_*`` methods, then in memory through `publish` once the transaction
committed. Any thread may read; `_lock` guards the in-memory maps, and readers get
copies, never a live dict.

Upgrades: data directories written before layout 2 kept a producer group's progress
in ``offsets`` with the consumer groups' committed offsets, and nothing on disk says
which group is which (a group's role is only known when a member joins). At open
(`upgrade`, one write transaction, idempotent: it runs once, when ``layout`` is absent)
every group found in ``offsets`` without progress of its own is marked *legacy*. When a
producer-group member later joins a legacy group, the group's entries move from
``offsets`` to ``progress`` in one writer transaction (`stage_adopt`) before its first
assignment is computed, so the streamer resumes where it was instead of at 0; when a
consumer-group member joins one, only the marker goes. Until then a legacy producer
group's progress counts as a consumer group's offsets, as it did before the upgrade.
"""

from __future__ import annotations

import struct
import threading
from typing import TYPE_CHECKING

import lmdb

from walbroker import keys
from walbroker.types import TopicPartition

if TYPE_CHECKING:
    from walbroker.txn import StagedTxn

Key = tuple[str, TopicPartition]
Entry = tuple[int, int]  # (offset or progress, commit_time_ns)

LAYOUT = 2  # 1 = progress kept in `offsets` (before the `progress` sub-database)
_LAYOUT_KEY = b"layout"
_LEGACY = b"legacy\x00"
_U32 = struct.Struct(">I")


class Offsets:
    """Committed offsets (consumer groups) and progress (producer groups) of every partition."""

    def __init__(self, env: lmdb.Environment, dbs: dict[str, lmdb._Database]) -> None:
        self.env = env
        self._offsets, self._progress, self._meta = dbs["offsets"], dbs["progress"], dbs["meta"]
        self._lock = threading.Lock()
        self._committed: dict[Key, Entry] = {}
        self._progress_map: dict[Key, Entry] = {}
        self._legacy: set[str] = set()

    # ---- open --------------------------------------------------------------------------

    def upgrade(self) -> list[str]:
        """Bring an older data directory to the current layout (one transaction); return the
        groups marked legacy by this call (empty once the layout is current)."""
        with self.env.begin(write=True) as txn:
            if txn.get(_LAYOUT_KEY, db=self._meta) is not None:
                return []
            with_progress = {g for (g, _tp), _ in _scan(txn, self._progress)}
            legacy = sorted({g for (g, _tp), _ in _scan(txn, self._offsets)} - with_progress)
            for group in legacy:
                txn.put(_LEGACY + group.encode(), b"", db=self._meta)
            txn.put(_LAYOUT_KEY, _U32.pack(LAYOUT), db=self._meta)
        return legacy

    def load(self, txn: lmdb.Transaction) -> None:
        """Read both tables and the legacy markers into memory (at open)."""
        committed = dict(_scan(txn, self._offsets))
        progress = dict(_scan(txn, self._progress))
        cur = txn.cursor(db=self._meta)
        legacy: set[str] = set()
        if cur.set_range(_LEGACY):
            for k in cur.iternext(values=False):
                if not bytes(k).startswith(_LEGACY):
                    break
                legacy.add(bytes(k)[len(_LEGACY) :].decode())
        with self._lock:
            self._committed, self._progress_map, self._legacy = committed, progress, legacy

    # ---- reads (any thread) --------------------------------------------------------------

    def committed(self, group: str, tp: TopicPartition) -> int | None:
        """The consumer group's committed offset on `tp`, or None if it never committed."""
        entry = self._committed.get((group, tp))
        return entry[0] if entry else None

    def progress(self, group: str, tp: TopicPartition) -> int | None:
        """The producer group's progress on `tp`, or None if it has none."""
        entry = self._progress_map.get((group, tp))
        return entry[0] if entry else None

    def group_names(self) -> set[str]:
        """Every group with a committed offset or progress."""
        with self._lock:
            return {g for g, _tp in self._committed} | {g for g, _tp in self._progress_map}

    def committed_entries(self) -> dict[Key, Entry]:
        """A copy of every committed offset."""
        with self._lock:
            return dict(self._committed)

    def progress_entries(self) -> dict[Key, Entry]:
        """A copy of every producer group's progress."""
        with self._lock:
            return dict(self._progress_map)

    def groups_on(self, topic: str) -> set[str]:
        """Consumer groups with a committed offset on some partition of `topic`."""
        with self._lock:
            return {g for (g, tp) in self._committed if tp.topic == topic}

    def keys_of(self, group: str) -> list[Key]:
        """Every (group, partition) key `group` has in either table."""
        with self._lock:
            return [k for k in [*self._committed, *self._progress_map] if k[0] == group]

    def is_legacy(self, group: str) -> bool:
        """True while `group` may be a producer group whose progress an older broker kept
        among committed offsets (see the module docstring)."""
        return group in self._legacy

    # ---- writes (the writer thread, inside its transaction) -------------------------------

    def stage_commit(self, staged: StagedTxn, group: str, tp: TopicPartition, entry: Entry) -> None:
        """Write a consumer group's committed offset."""
        staged.txn.put(keys.group_key(group, tp), keys.pack_offset(*entry), db=self._offsets)
        staged.offsets[(group, tp)] = entry

    def stage_progress(
        self, staged: StagedTxn, group: str, tp: TopicPartition, entry: Entry
    ) -> None:
        """Write a producer group's progress (in the transaction of the batch it covers)."""
        staged.txn.put(keys.group_key(group, tp), keys.pack_offset(*entry), db=self._progress)
        staged.progress[(group, tp)] = entry

    def stage_adopt(self, staged: StagedTxn, group: str, role: str) -> None:
        """Settle a legacy group now that a member said what it is: a producer group's
        entries move from `offsets` to `progress`; a consumer group keeps them."""
        txn = staged.txn
        if not txn.delete(_LEGACY + group.encode(), db=self._meta):
            return  # settled already (by an earlier join in this or another transaction)
        staged.settled.add(group)
        if role != "producer":
            return
        prefix = group.encode() + b"\x00"
        for (g, tp), entry in _scan(txn, self._offsets, prefix):
            if txn.get(keys.group_key(g, tp), db=self._progress) is None:
                self.stage_progress(staged, g, tp, entry)
        _delete_prefixed(txn, self._offsets, prefix)
        staged.adopted.add(group)

    def stage_delete_group(self, staged: StagedTxn, group: str) -> None:
        """Delete every committed offset, progress and upgrade marker of `group`."""
        prefix = group.encode() + b"\x00"
        for db in (self._offsets, self._progress):
            _delete_prefixed(staged.txn, db, prefix)
        if staged.txn.delete(_LEGACY + group.encode(), db=self._meta):
            staged.settled.add(group)
        staged.offsets = {k: v for k, v in staged.offsets.items() if k[0] != group}
        staged.progress = {k: v for k, v in staged.progress.items() if k[0] != group}
        staged.deleted_groups.add(group)

    def stage_delete_topic(self, staged: StagedTxn, topic: str) -> None:
        """Delete every committed offset and progress on `topic`."""
        for db in (self._offsets, self._progress):
            doomed = [k for k in staged.txn.cursor(db=db).iternext(values=False)]
            for k in doomed:
                if keys.split_group_key(bytes(k))[1].topic == topic:
                    staged.txn.delete(bytes(k), db=db)
        staged.offsets = {k: v for k, v in staged.offsets.items() if k[1].topic != topic}
        staged.progress = {k: v for k, v in staged.progress.items() if k[1].topic != topic}

    # ---- after commit (the writer thread) -------------------------------------------------

    def publish(self, staged: StagedTxn) -> None:
        """Mirror a committed transaction's offset changes in memory."""
        gone = staged.deleted_groups
        topics = staged.deleted_topics
        with self._lock:
            for table, also_gone in ((self._committed, staged.adopted), (self._progress_map, ())):
                if gone or topics or also_gone:
                    doomed = [
                        k
                        for k in table
                        if k[0] in gone or k[0] in also_gone or k[1].topic in topics
                    ]
                    for k in doomed:
                        del table[k]
            self._committed.update(staged.offsets)
            self._progress_map.update(staged.progress)
            self._legacy -= staged.settled


def _scan(
    txn: lmdb.Transaction, db: lmdb._Database, prefix: bytes = b""
) -> list[tuple[Key, Entry]]:
    """Every (key, entry) of a group-keyed table, or only those under `prefix`."""
    cur = txn.cursor(db=db)
    out: list[tuple[Key, Entry]] = []
    if not cur.set_range(prefix):
        return out
    for k, v in cur:
        if not bytes(k).startswith(prefix):
            break
        out.append((keys.split_group_key(bytes(k)), keys.unpack_offset(bytes(v))))
    return out


def _delete_prefixed(txn: lmdb.Transaction, db: lmdb._Database, prefix: bytes) -> None:
    cur = txn.cursor(db=db)
    if not cur.set_range(prefix):
        return
    while bytes(cur.key()).startswith(prefix):
        if not cur.delete():  # delete moves the cursor to the next key
            return
