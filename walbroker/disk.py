"""The data directory's file system: a free-space watermark for appends and a start-up check.

LMDB grows its file as pages are used, up to the map size. Without a watermark a
full file system surfaces as an LMDB write error in the middle of a group
commit; with it, appends are refused with RESOURCE_EXHAUSTED (and a retry-after)
while `min_free_bytes` are still free, so offset commits, deletions and
retention, which need a few pages, can still run and free space.

Thread-safe: `check` is called by every publishing thread, under one lock.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from walbroker.config import MAP_FLOOR_BYTES, MAP_HEADROOM_BYTES, MiB
from walbroker.errors import ResourceExhausted


class StartupError(Exception):
    """The broker cannot start with this configuration; the message says why."""


class DiskGuard:
    """Refuses appends when the data directory's file system is nearly full."""

    def __init__(
        self, path: Path, min_free_bytes: int, retry_after_ms: int, interval_s: float = 1.0
    ) -> None:
        self.path = path
        self.min_free_bytes = min_free_bytes
        self.retry_after_ms = retry_after_ms
        self.interval_s = interval_s
        self._lock = threading.Lock()  # guards the reading and what was admitted since
        self._free = self._read()
        self._read_at = time.monotonic()
        self._admitted = 0

    def _read(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def free_bytes(self) -> int:
        """Free bytes on the data directory's file system (a fresh reading)."""
        with self._lock:
            self._refresh()
            return self._free

    def _refresh(self) -> None:
        self._free, self._read_at, self._admitted = self._read(), time.monotonic(), 0

    def check(self, size: int = 0) -> None:
        """Admit `size` more bytes, or raise ResourceExhausted below the watermark.

        The reading is at most `interval_s` old; bytes admitted since count as used,
        and near the watermark every call reads afresh (statvfs is cheap).
        """
        with self._lock:
            estimate = self._free - self._admitted
            stale = time.monotonic() - self._read_at >= self.interval_s
            if stale or estimate - size < 2 * self.min_free_bytes:
                self._refresh()
                estimate = self._free
            if estimate - size < self.min_free_bytes:
                raise ResourceExhausted(
                    self._refusal(estimate, size), retry_after_ms=max(self.retry_after_ms, 1000)
                )
            self._admitted += size

    def _refusal(self, free: int, size: int) -> str:
        """Why `size` bytes are refused with `free` bytes free: the watermark, or the batch."""
        watermark = f"the watermark of {self.min_free_bytes} (--min-free-bytes)"
        if free < self.min_free_bytes:
            return f"broker disk nearly full: {free} bytes free, below {watermark}"
        if size > free:
            return (
                f"broker disk nearly full: a batch of {size} bytes does not fit in the "
                f"{free} bytes free"
            )
        return (
            f"broker disk nearly full: a batch of {size} bytes would leave {free - size} of the "
            f"{free} bytes free, below {watermark}"
        )


def check_map_size(path: Path, map_size_bytes: int, retention_bytes: int) -> None:
    """Refuse to start when the LMDB map (what the log may grow to) exceeds the whole volume.

    The map is max(2 x --retention-bytes + 64 MiB, 256 MiB): the refusal says which of the
    two applies, and so what can fix it (a smaller budget cannot get under the floor).
    """
    st = os.statvfs(path)
    volume = st.f_blocks * st.f_frsize
    if map_size_bytes <= volume:
        return
    formula = "max(2 x --retention-bytes + 64 MiB, 256 MiB)"
    if volume < MAP_FLOOR_BYTES:
        raise StartupError(
            f"the log's map size ({map_size_bytes} bytes = {formula}) exceeds the volume of "
            f"the data directory ({volume} bytes at {path}): the map is never smaller than "
            f"{MAP_FLOOR_BYTES // MiB} MiB, whatever --retention-bytes is, so give the data "
            f"directory a volume of at least {MAP_FLOOR_BYTES} bytes"
        )
    most = (volume - MAP_HEADROOM_BYTES) // 2
    raise StartupError(
        f"the log's map size ({map_size_bytes} bytes = {formula}; --retention-bytes is "
        f"{retention_bytes}) exceeds the volume of the data directory ({volume} bytes at "
        f"{path}): lower --retention-bytes to at most {most} or give the data directory a "
        "larger volume"
    )
