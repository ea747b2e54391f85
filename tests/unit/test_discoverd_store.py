"""MemoryStore on a hand-driven clock: expiry, leader events, and watchers that fall behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from encom.api.errors import Conflict
from encom.api.types import InstanceRegistration, ServiceEvent, ServiceMeta
from encom.discoverd import store as store_module
from encom.discoverd.store import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reg(port: int) -> InstanceRegistration:
    return InstanceRegistration(addr=f"127.0.0.1:{port}")


def kinds(events: list[ServiceEvent]) -> list[tuple[str, str | None]]:
    return [(e.kind, e.instance.id if e.instance else None) for e in events]


async def drain(watch: AsyncIterator[ServiceEvent], count: int) -> list[ServiceEvent]:
    return [await asyncio.wait_for(anext(watch), 1) for _ in range(count)]


async def test_expiry_follows_the_last_heartbeat() -> None:
    clock = Clock()
    store = MemoryStore(ttl=10, clock=clock)
    await store.register("svc", "a", reg(1))
    clock.now += 6
    await store.register("svc", "a", reg(1))  # heartbeat
    await store.register("svc", "b", reg(2))
    clock.now += 6
    assert store.expire() == []
    clock.now += 4
    assert [i.id for i in store.expire()] == ["a", "b"]
    assert await store.instances("svc") == []


async def test_leader_events_follow_the_oldest_instance() -> None:
    clock = Clock()
    store = MemoryStore(ttl=10, clock=clock)
    watch = store.watch("svc")
    assert kinds(await drain(watch, 1)) == [("current", None)]
    await store.register("svc", "a", reg(1))
    await store.register("svc", "b", reg(2))
    clock.now += 5
    await store.register("svc", "b", reg(2))
    clock.now += 6
    store.expire()
    assert kinds(await drain(watch, 5)) == [
        ("up", "a"),
        ("leader", "a"),
        ("up", "b"),
        ("down", "a"),
        ("leader", "b"),
    ]
    await watch.aclose()


async def test_a_watcher_that_falls_behind_is_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "SUBSCRIBER_QUEUE_SIZE", 3)
    store = MemoryStore()
    watch = store.watch("svc")
    await drain(watch, 1)  # "current": the watcher is now subscribed
    for n in range(10):
        await store.register("svc", f"i{n}", reg(n))
    received = [event async for event in watch]
    assert 0 < len(received) <= 3
    await store.register("svc", "late", reg(99))  # no watcher left to overflow


async def test_meta_compare_and_swap() -> None:
    store = MemoryStore()
    first = await store.set_meta("svc", ServiceMeta(data={"a": 1}, index=0))
    with pytest.raises(Conflict):
        await store.set_meta("svc", ServiceMeta(data={"a": 2}, index=first.index + 1))
    assert await store.get_meta("svc") == first


async def test_close_ends_watches() -> None:
    store = MemoryStore()
    watch = store.watch("svc")
    await drain(watch, 1)
    await store.close()
    assert [event async for event in watch] == []
