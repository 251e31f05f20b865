"""Give freed large buffers back to the OS (glibc), so a flood's memory does not stay.

glibc serves a large allocation with mmap and unmaps it on free, but raises that
threshold (up to 32 MiB) each time such a block is freed; from then on 4 MiB publish
batches, gRPC's receive buffers and their protobuf copies came from the heaps of the
broker's many threads, and freed, stayed there: 480 MiB still held after a flood of 4 MiB
batches (174 MiB with a fixed threshold; docs/limits.md, "Memory under a publish flood").
A fixed threshold (mallopt(M_MMAP_THRESHOLD)) keeps every block of 1 MiB or more mapped
on its own, returned when freed. A no-op where the C library is not glibc.

Fixing it also fixes the trim threshold, at glibc's 128 KiB unless set: each heap then gave
its top back to the OS and took it again many times a second, and the broker's CPU for an
import rose by half (0.68-0.80 -> 1.12-1.25 CPU-s, `bench.import_bench`). It is set to
8 MiB (0.71-0.74 CPU-s): a heap keeps at most that much free at its top.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1024 * 1024
TRIM_THRESHOLD_BYTES = 8 * 1024 * 1024


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Set glibc's mmap threshold to `threshold` bytes and its trim threshold to
    `TRIM_THRESHOLD_BYTES`; False where that is not possible."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = True
    for option, value in ((M_MMAP_THRESHOLD, threshold), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)):
        if not mallopt(option, value):
            log.warning("mallopt failed", extra={"option": option, "value": value})
            ok = False
    return ok
