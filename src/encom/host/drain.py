"""Draining a job before it is signalled: wait until nothing is connected to its port any more.

Jobs share the host's network namespace, so the kernel's socket tables in /proc/net/tcp and /proc/net/tcp6 list
every connection to a job's port. A connection whose local port is the job's port and whose state is ESTABLISHED
(01) is a request in flight (or a keep-alive connection a client still holds). Once the router has taken the job
out (discoverd deregistration → HAProxy maintenance), no new ones arrive and the existing ones finish.

Keep-alive connections the router keeps idle do not hold the drain up: HAProxy 2.6 closes a server's idle
connections when the server enters maintenance, and the router closes the ones that go idle afterwards (requests
that were in flight then) as soon as none is in use (see `Router._delete_lingering`). So what is left to wait for
are requests in flight, and clients connected to the port directly, which the timeout bounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
ESTABLISHED = "01"
POLL_SECONDS = 0.05


def established_on(table: str, port: int) -> int:
    """How many ESTABLISHED connections in a /proc/net/tcp(6) table have `port` as their local port.

    Lines look like `  0: 0100007F:1F90 0100007F:C350 01 ...` (sl, local addr:port, remote addr:port, state, ...),
    ports in hex; the first line is a header.
    """
    count = 0
    for line in table.splitlines():
        cols = line.split()
        if len(cols) < 4 or not cols[0].endswith(":") or cols[3] != ESTABLISHED:
            continue
        _, sep, local_port = cols[1].rpartition(":")
        if sep and _hex_port(local_port) == port:
            count += 1
    return count


def _hex_port(text: str) -> int | None:
    try:
        return int(text, 16)
    except ValueError:
        return None


def read_tables(paths: Iterable[Path] = TCP_TABLES) -> list[str]:
    tables = []
    for path in paths:
        try:
            tables.append(path.read_text())
        except OSError:  # no IPv6: no tcp6 table
            continue
    return tables


def connections(port: int, paths: Iterable[Path] = TCP_TABLES) -> int:
    """ESTABLISHED inbound connections to `port` right now (IPv4 and IPv6)."""
    return sum(established_on(table, port) for table in read_tables(paths))


async def wait_drained(port: int, settle: float, timeout: float) -> int:  # noqa: ASYNC109 (returns what is left)
    """Sleep `settle` (the router applying the deregistration), then poll until `port` has no ESTABLISHED inbound
    connection, for at most `timeout` seconds in all. Returns the connections still open (0 when drained)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await asyncio.sleep(min(settle, timeout))
    while True:
        left = await asyncio.to_thread(connections, port)
        if left == 0 or loop.time() >= deadline:
            return left
        await asyncio.sleep(min(POLL_SECONDS, max(0.0, deadline - loop.time())))
