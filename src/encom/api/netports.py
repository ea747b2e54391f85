"""Keeping the kernel's ephemeral ports out of the ranges encom hands out (job ports, TCP routes).

Linux picks outgoing ports from `ip_local_port_range` (32768-60999 by default), which overlaps the job port
range (55000+): a client socket could hold a job's port just when it is allocated. Adding the range to
`ip_local_reserved_ports` stops that; explicit binds to a reserved port still work.
"""

from __future__ import annotations

import logging
from pathlib import Path

RESERVED = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")
EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")

log = logging.getLogger(__name__)


def merged(current: str, lo: int, hi: int) -> str:
    """The reserved-ports list with `lo-hi` added (kept as is when already covered)."""
    entries = [e.strip() for e in current.replace("\n", "").split(",") if e.strip()]
    wanted = f"{lo}-{hi}" if hi > lo else str(lo)
    return ",".join(entries) if wanted in entries else ",".join([*entries, wanted])


def overlap_with_ephemeral(lo: int, hi: int, ephemeral: str) -> tuple[int, int] | None:
    first, last = (int(p) for p in ephemeral.split())
    lo, hi = max(lo, first), min(hi, last)
    return (lo, hi) if lo <= hi else None


def reserve_ports(lo: int, hi: int, path: Path = RESERVED, ephemeral: Path = EPHEMERAL) -> bool:
    """Reserve the part of `lo..hi` the kernel could hand out as ephemeral ports. False (and a warning) when
    the kernel setting cannot be changed."""
    try:
        overlap = overlap_with_ephemeral(lo, hi, ephemeral.read_text())
        if overlap is None:
            return True
        lo, hi = overlap
        current = path.read_text()
        new = merged(current, lo, hi)
        if new != current.strip():
            path.write_text(new)
    except OSError as exc:
        log.warning("cannot reserve ports %d-%d from ephemeral use: %s", lo, hi, exc)
        return False
    return True
