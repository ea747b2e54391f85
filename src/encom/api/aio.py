"""asyncio helpers every component uses."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(awaitable: Awaitable[T], seconds: float | None) -> T:
    """`asyncio.wait_for` without its Python 3.11 flaw: a cancellation that arrives as the awaited thing completes
    is lost (cpython#86296), so a task told to stop while waiting on a busy event in a loop went on waiting
    (a controller took 20 s and more to stop in tests). `asyncio.timeout` keeps the cancellation."""
    async with asyncio.timeout(seconds):
        return await awaitable
