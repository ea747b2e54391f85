"""asyncio helpers every component uses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(awaitable: Awaitable[T], seconds: float | None) -> T:
    """`asyncio.wait_for` without its Python 3.11 flaw: a cancellation that arrives as the awaited thing completes
    is lost (cpython#86296), so a task told to stop while waiting on a busy event in a loop went on waiting
    (a controller took 20 s and more to stop in tests). `asyncio.timeout` keeps the cancellation."""
    async with asyncio.timeout(seconds):
        return await awaitable


class KeyedLocks:
    """One lock per key (an app, a URL…), kept only while someone holds it or waits for it: a dict of locks that
    is never emptied grows with every key ever seen."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # key -> (lock, holders and waiters)

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)
