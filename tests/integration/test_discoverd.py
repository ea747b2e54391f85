"""discoverd as encomd runs it (the real role on a loopback port), driven only through DiscoverdClient."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest

from encom.api.errors import ApiError
from encom.api.settings import Ports, Settings
from encom.api.types import InstanceRegistration, ServiceEvent, ServiceMeta
from encom.discoverd.client import DiscoverdClient
from encom.discoverd.service import run
from encom.discoverd.store import MemoryStore
from tests.integration import roles
from tests.integration.roles import free_port, running_role, start_role

TEST_TTL = 0.6
SCAN_INTERVAL = 0.05
WAIT = 5.0
PORTS = (21000, 21999)  # the range reserved for these tests

within = partial(roles.within, seconds=WAIT)


class Discoverd:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = DiscoverdClient(settings.discoverd_url, settings.internal_secret)


@pytest.fixture
async def discoverd(tmp_path: Path) -> AsyncIterator[Discoverd]:
    settings = Settings(data_dir=tmp_path, ports=Ports(discoverd=free_port(*PORTS)))
    store = MemoryStore(ttl=TEST_TTL, scan_interval=SCAN_INTERVAL)
    async with running_role(lambda ctx: run(ctx, store), settings, "discoverd", WAIT, WAIT):
        service = Discoverd(settings)
        try:
            yield service
        finally:
            await service.client.aclose()


class Watcher:
    """Collects one watch connection's events in the background."""

    def __init__(self, client: DiscoverdClient, service: str) -> None:
        self.events: asyncio.Queue[ServiceEvent] = asyncio.Queue()
        self.task = asyncio.create_task(self._follow(client, service))

    async def _follow(self, client: DiscoverdClient, service: str) -> None:
        async for event in client.watch(service):
            await self.events.put(event)

    async def next(self, what: str) -> ServiceEvent:
        return await within(self.events.get(), what)

    async def expect(self, kind: str, instance_id: str | None = None) -> ServiceEvent:
        event = await self.next(f"a {kind!r} event for {instance_id}")
        got = (event.kind, event.instance.id if event.instance else None)
        assert got == (kind, instance_id), f"expected {kind} {instance_id}, got {got}"
        return event

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def watching(client: DiscoverdClient, service: str) -> AsyncIterator[Watcher]:
    watcher = Watcher(client, service)
    try:
        yield watcher
    finally:
        await watcher.close()


def reg(port: int, **meta: str) -> InstanceRegistration:
    return InstanceRegistration(addr=f"127.0.0.1:{port}", proto="http", meta=meta)


async def test_register_list_leader_and_deregister(discoverd: Discoverd) -> None:
    client = discoverd.client
    a = await client.register("app-web", "a", reg(5001))
    b = await client.register("app-web", "b", reg(5002))
    assert a.index < b.index
    assert (a.service, a.addr, a.proto) == ("app-web", "127.0.0.1:5001", "http")

    again = await client.register("app-web", "a", reg(5001))
    assert again.index == a.index, "re-registering is a heartbeat, not a new instance"

    assert [i.id for i in await client.instances("app-web")] == ["a", "b"]
    assert await client.services() == ["app-web"]
    leader = await client.leader("app-web")
    assert leader is not None and leader.id == "a"

    await client.deregister("app-web", "a")
    assert [i.id for i in await client.instances("app-web")] == ["b"]
    leader = await client.leader("app-web")
    assert leader is not None and leader.id == "b"

    await client.deregister("app-web", "b")
    await client.deregister("app-web", "never-registered")  # tolerated by the client
    assert await client.instances("app-web") == []
    assert await client.leader("app-web") is None
    assert await client.services() == []


async def test_heartbeats_keep_an_instance_and_silence_expires_it(discoverd: Discoverd) -> None:
    client = discoverd.client
    await client.register("svc", "kept", reg(5001))
    await client.register("svc", "silent", reg(5002))
    async with watching(client, "svc") as watcher:
        await watcher.expect("up", "kept")
        await watcher.expect("up", "silent")
        await watcher.expect("current")

        async def heartbeat() -> None:
            while True:
                await client.register("svc", "kept", reg(5001))
                await asyncio.sleep(TEST_TTL / 4)

        beating = asyncio.create_task(heartbeat())
        try:
            await watcher.expect("down", "silent")
            await asyncio.sleep(TEST_TTL * 2)  # several TTLs of heartbeats: "kept" must survive them
            assert [i.id for i in await client.instances("svc")] == ["kept"]
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating
        await watcher.expect("down", "kept")
    assert await client.instances("svc") == []


async def test_watch_sends_current_set_then_live_events_in_order(discoverd: Discoverd) -> None:
    client = discoverd.client
    await client.register("web", "a", reg(5001))
    await client.register("web", "b", reg(5002))
    async with watching(client, "web") as watcher:
        await watcher.expect("up", "a")
        await watcher.expect("up", "b")
        current = await watcher.expect("current")
        assert current.service == "web"

        await client.register("web", "c", reg(5003))
        await watcher.expect("up", "c")

        await client.register("web", "b", reg(5002))  # plain heartbeat: no event
        await client.register("web", "b", reg(5002, version="2"))
        update = await watcher.expect("update", "b")
        assert update.instance is not None and update.instance.meta == {"version": "2"}

        await client.deregister("web", "c")
        await watcher.expect("down", "c")
        await client.deregister("web", "a")
        await watcher.expect("down", "a")
        leader = await watcher.expect("leader", "b")
        assert leader.instance is not None and leader.instance.meta == {"version": "2"}

        await client.deregister("web", "b")
        await watcher.expect("down", "b")
        await client.register("web", "d", reg(5004))
        await watcher.expect("up", "d")
        await watcher.expect("leader", "d")
        assert watcher.events.empty()


async def test_watch_of_an_empty_service_starts_with_current(discoverd: Discoverd) -> None:
    async with watching(discoverd.client, "nothing-yet") as watcher:
        await watcher.expect("current")
        await discoverd.client.register("nothing-yet", "first", reg(5001))
        await watcher.expect("up", "first")
        await watcher.expect("leader", "first")


async def test_leader_fails_over_to_the_next_oldest_when_it_expires(discoverd: Discoverd) -> None:
    client = discoverd.client
    ports = {"old": 5001, "middle": 5002, "young": 5003}
    for name, port in ports.items():
        await client.register("scheduler", name, reg(port))
    leader = await client.leader("scheduler")
    assert leader is not None and leader.id == "old"

    async with watching(client, "scheduler") as watcher:
        for _ in range(4):
            await watcher.next("the initial set")

        async def keep_alive(*names: str) -> None:
            while True:
                for name in names:
                    await client.register("scheduler", name, reg(ports[name]))
                await asyncio.sleep(TEST_TTL / 4)

        beating = asyncio.create_task(keep_alive("middle", "young"))
        try:
            await watcher.expect("down", "old")
            await watcher.expect("leader", "middle")
            leader = await client.leader("scheduler")
            assert leader is not None and leader.id == "middle"
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating


async def test_meta_is_compare_and_swap(discoverd: Discoverd) -> None:
    client = discoverd.client
    assert await client.get_meta("scheduler") is None

    first = await client.set_meta("scheduler", ServiceMeta(data={"epoch": 1}, index=0))
    assert first.index > 0 and first.data == {"epoch": 1}
    assert await client.get_meta("scheduler") == first

    with pytest.raises(ApiError) as conflict:
        await client.set_meta("scheduler", ServiceMeta(data={"epoch": 2}, index=0))
    assert conflict.value.status == 409 and conflict.value.code == "conflict"

    second = await client.set_meta("scheduler", ServiceMeta(data={"epoch": 2}, index=first.index))
    assert second.index > first.index
    with pytest.raises(ApiError) as stale:
        await client.set_meta("scheduler", ServiceMeta(data={"epoch": 3}, index=first.index))
    assert stale.value.status == 409
    assert await client.get_meta("scheduler") == second
    assert "scheduler" in await client.services()


async def test_every_route_but_ping_needs_the_internal_secret(discoverd: Discoverd) -> None:
    async with DiscoverdClient(discoverd.settings.discoverd_url, "wrong-secret") as intruder:
        for attempt in (
            intruder.register("svc", "x", reg(5001)),
            intruder.instances("svc"),
            intruder.leader("svc"),
            intruder.services(),
            intruder.get_meta("svc"),
            intruder.set_meta("svc", ServiceMeta(data={}, index=0)),
        ):
            with pytest.raises(ApiError) as denied:
                await attempt
            assert denied.value.status == 401, denied.value
        with pytest.raises(ApiError) as denied:
            await anext(aiter(intruder.watch("svc")))
        assert denied.value.status == 401
        assert (await intruder.get_json("/ping"))["status"] == "ok"
    assert await discoverd.client.instances("svc") == []


async def test_bad_names_are_refused(discoverd: Discoverd) -> None:
    with pytest.raises(ApiError) as refused:
        await discoverd.client.register("svc", "bad id!", reg(5001))
    assert refused.value.status == 400 and "instance id" in refused.value.message


async def test_stopping_the_role_ends_open_watches_promptly(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, ports=Ports(discoverd=free_port(*PORTS)))
    task = (await start_role(run, settings, "discoverd", WAIT)).task
    async with DiscoverdClient(settings.discoverd_url, settings.internal_secret) as client:
        events: list[ServiceEvent] = []
        started = asyncio.Event()

        async def follow() -> None:
            async for event in client.watch("svc"):
                events.append(event)
                started.set()

        follower = asyncio.create_task(follow())
        await within(started.wait(), "the watch to start")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await within(task, "discoverd to stop with a watch open", seconds=2.0)
        await within(follower, "the watch to end when discoverd stops", seconds=2.0)
        assert [e.kind for e in events] == ["current"]
