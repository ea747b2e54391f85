"""KeyedLocks: one lock per key, forgotten once nobody holds or waits for it."""

from __future__ import annotations

import asyncio

from encom.api.aio import KeyedLocks


async def test_a_key_is_held_by_one_task_at_a_time_and_forgotten_after() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    order: list[str] = []

    async def use(key: str, name: str) -> None:
        async with locks.hold(key):
            inside.append(name)
            assert [n for n in inside if n.startswith(key)] == [name], "two holders of one key"
            await asyncio.sleep(0.01)
            order.append(name)
            inside.remove(name)

    await asyncio.gather(*(use(key, f"{key}{i}") for i in range(5) for key in ("a", "b")))
    assert sorted(order) == sorted(f"{k}{i}" for i in range(5) for k in ("a", "b"))
    assert len(locks) == 0


async def test_a_cancelled_waiter_leaves_nothing_behind() -> None:
    locks = KeyedLocks()
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("app"):
            held.set()
            await release.wait()

    async def waiter() -> None:
        async with locks.hold("app"):
            raise AssertionError("the waiter was cancelled before it got the lock")

    first = asyncio.create_task(holder())
    await held.wait()
    second = asyncio.create_task(waiter())
    await asyncio.sleep(0.01)
    assert len(locks) == 1
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    release.set()
    await first
    assert len(locks) == 0


async def test_many_keys_do_not_accumulate() -> None:
    locks = KeyedLocks()
    for n in range(1000):
        async with locks.hold(f"job-{n}"):
            pass
    assert len(locks) == 0
