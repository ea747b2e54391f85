"""Health checks: a TCP connect (or an HTTP GET) to the job's port on loopback until it answers."""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from encom.api.aio import wait_for
from encom.api.types import HealthCheck

ATTEMPT_TIMEOUT = 2.0


async def probe(check: HealthCheck, port: int) -> None:
    """One attempt; raises OSError (or httpx errors) when the job does not answer as expected."""
    if check.type == "http":
        async with httpx.AsyncClient(timeout=ATTEMPT_TIMEOUT) as client:
            response = await client.get(f"http://127.0.0.1:{port}{check.path}")
        if response.status_code != check.status:
            raise OSError(f"HTTP {response.status_code} from {check.path}, expected {check.status}")
        return
    _, writer = await wait_for(asyncio.open_connection("127.0.0.1", port), ATTEMPT_TIMEOUT)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def wait_healthy(check: HealthCheck, port: int) -> str | None:
    """None once the check passes; the reason when it has not passed within `start_timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + check.start_timeout
    last = "no answer"
    while True:
        try:
            await probe(check, port)
            return None
        except (OSError, TimeoutError, httpx.HTTPError) as exc:
            last = str(exc) or type(exc).__name__
        if loop.time() >= deadline:
            return f"health check ({check.type} port {port}) did not pass within {check.start_timeout:g}s: {last}"
        await asyncio.sleep(check.interval)
