"""Giving freed memory back to the system.

glibc's malloc keeps what Python frees in its heaps (one per thread that allocates, up to 8 per core) and hands
it back only when the top of a heap is free. After a burst of large transient buffers (log lines of 10 kB read
and parsed by the thousand, big API bodies) encomd's RSS stayed about 50 % above its idle level with no app
left, although Python held no more objects than before (bench/rss.py). Two glibc knobs fix that:
- a fixed mmap threshold: a block of 1 MiB or more gets its own mapping, returned to the system when freed
  (the default threshold grows up to 32 MiB after the first large free, so large buffers land in the heaps);
- `malloc_trim(0)` now and then: returns every free page of every heap, not only the top.
Elsewhere than glibc (musl, macOS) both are skipped.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD = 1 << 20
TRIM_INTERVAL = 30.0


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
        return None
    return libc


_LIBC = _glibc()


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Large blocks get their own mappings from now on; False where malloc is not glibc's."""
    return _LIBC is not None and bool(_LIBC.mallopt(M_MMAP_THRESHOLD, threshold))


def trim() -> bool:
    """Return the free memory of malloc's heaps to the system; True when some was."""
    return _LIBC is not None and bool(_LIBC.malloc_trim(0))


async def trim_periodically(interval: float = TRIM_INTERVAL) -> None:
    """`trim` every `interval` seconds, for the life of the daemon: in a thread (ctypes releases the GIL), as it
    takes up to some 30 ms when there is much to return."""
    if _LIBC is None:
        return
    while True:
        await asyncio.sleep(interval)
        started = time.perf_counter()
        released = await asyncio.to_thread(trim)
        log.debug(
            "malloc_trim: %s in %.1f ms", "released" if released else "nothing", 1e3 * (time.perf_counter() - started)
        )
