"""Looking at processes through /proc."""

from __future__ import annotations

from pathlib import Path


def process_alive(pid: int) -> bool:
    """True when `pid` runs; False when it is gone, a zombie (which `kill -0` still finds: these machines' PID 1
    does not reap) or dead."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("State:"):
            fields = line.split()
            return len(fields) < 2 or fields[1] not in ("Z", "X")
    return True
