"""The data directory's file system: a free-space watermark for appends and a start-up check.

LMDB grows its file as pages are used, up to the map size. Without a watermark a
full file system surfaces as an LMDB write error in the middle of a group
commit; with it, appends are refused with RESOURCE_EXHAUSTED (and a retry-after)
while `min_free_bytes` are still free, so offset commits, deletions and
retention, which need a few pages, can still run and free space.

Thread-safe: `check` is called by every publishing thread; it reads statvfs at
most every `interval_s` (a racy refresh only costs one extra statvfs call).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

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
        self._free = self._read()
        self._read_at = time.monotonic()

    def _read(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def free_bytes(self) -> int:
        """Bytes free for the broker on the data directory's file system (cached briefly)."""
        now = time.monotonic()
        if now - self._read_at >= self.interval_s:
            self._free, self._read_at = self._read(), now
        return self._free

    def check(self) -> None:
        """Raise ResourceExhausted when free space is below the watermark."""
        free = self.free_bytes()
        if free < self.min_free_bytes:
            raise ResourceExhausted(
                f"broker disk nearly full: {free} bytes free, below the watermark of "
                f"{self.min_free_bytes} (--min-free-bytes)",
                retry_after_ms=max(self.retry_after_ms, 1000),
            )


def check_map_size(path: Path, map_size_bytes: int) -> None:
    """Refuse to start when the LMDB map (what the log may grow to) exceeds the whole volume."""
    st = os.statvfs(path)
    volume = st.f_blocks * st.f_frsize
    if map_size_bytes > volume:
        raise StartupError(
            f"the log's map size ({map_size_bytes} bytes = 2 x --retention-bytes + 64 MiB) "
            f"exceeds the volume of the data directory ({volume} bytes at {path}): lower "
            "--retention-bytes or give the data directory a larger volume"
        )
