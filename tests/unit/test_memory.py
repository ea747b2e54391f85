"""encom.api.memory: freed memory goes back to the system (glibc keeps it in its heaps otherwise)."""

from __future__ import annotations

import subprocess
import sys

from encom.api import memory

# A fresh interpreter: fills malloc's heap with small blocks (below the mmap threshold), keeps one in fifty
# (so the heap's top is never free and plain free() returns nothing), then trims.
PROBE = """
from encom.api.memory import trim

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

junk = [bytes(3000) for _ in range(60_000)]
kept = junk[::50]
del junk
before = rss_kib()
assert trim()
print(before, rss_kib())
"""


def test_trim_returns_freed_heap_memory() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60)
    before, after = (int(n) for n in out.stdout.split())
    assert before - after > 100_000, f"RSS {before} KiB -> {after} KiB"


def test_the_mmap_threshold_is_set_on_glibc() -> None:
    assert memory.fix_mmap_threshold()
