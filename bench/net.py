"""Loopback helpers the benchmarks share."""

from __future__ import annotations

import asyncio
import socket


async def wait_listening(port: int, limit: float = 20.0, poll: float = 0.002) -> None:
    """Until something accepts TCP on 127.0.0.1:`port`, polling every `poll` seconds (the start-up benchmark
    measures with this, hence the short default); TimeoutError after `limit` seconds."""
    try:
        async with asyncio.timeout(limit):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(poll)
                    continue
                writer.close()
                return
    except TimeoutError:
        raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {limit:g} s") from None


def free_port(start: int, span: int = 500) -> int:
    """The first port from `start` that can be bound on loopback."""
    for port in range(start, start + span):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {start}-{start + span - 1}")
