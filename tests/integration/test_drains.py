"""Log drains through the controller's API over real HTTPS: checks, records, events, app deletion.
(Shipping lines to real receivers is in tests/e2e/test_drains.py, on a whole cluster.)"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import select
from starlette.responses import StreamingResponse

from encom.api import ndjson
from encom.api.server import embedded_server, run_server
from encom.api.settings import Ports, Settings
from encom.api.types import Drain, LogLine, utcnow
from encom.bootstrap.tls import ensure_tls
from encom.controller.client import ControllerClient
from encom.controller.db import Database, default_url
from encom.controller.models import DrainRow
from tests.integration.conftest import running_controller
from tests.integration.roles import eventually, free_ports
from tests.integration.test_controller import collect, expect_error, fake_discoverd, within
from tests.unit.test_drains import receiving

pytestmark = pytest.mark.integration

PORTS = (11100, 11199)  # what the resume test starts (the unit tests use 11000-11099, e2e 11200-11999)

TOKEN = re.compile(r"^d\.[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
SYSLOG = "syslog+tcp://logs.example.com:514"
HTTPS = "https://user:s3cret@logs.example.com/drain?x=1"


async def test_add_list_and_remove_by_id_or_url(client: ControllerClient) -> None:
    app = await client.create_app("example")
    first = await client.create_drain("example", SYSLOG)
    second = await client.create_drain(app.id, HTTPS)
    assert (first.app_id, first.url) == (app.id, SYSLOG)
    assert second.url == HTTPS, "the owner gets the URL back as given"
    assert TOKEN.match(first.token) and TOKEN.match(second.token) and first.token != second.token
    assert [d.id for d in await client.list_drains("example")] == [first.id, second.id]

    assert (await client.delete_drain("example", first.id)).id == first.id
    assert (await client.delete_drain("example", HTTPS)).id == second.id
    assert await client.list_drains("example") == []
    missing = await expect_error(404, client.delete_drain("example", first.id))
    assert missing.message == f'drain "{first.id}" not found in app example'
    gone = await expect_error(404, client.delete_drain("example", HTTPS))
    assert "s3cret" not in gone.message
    await expect_error(404, client.list_drains("nosuch"))
    await expect_error(404, client.create_drain("nosuch", SYSLOG))


HINT = "use syslog+tcp://, syslog+tls://, https:// or http://"
BAD = [
    ("ftp://logs.example.com:21", f'unsupported drain URL scheme "ftp": {HINT}'),
    ("logs.example.com:514", f"invalid drain URL: expected scheme://host:port ({HINT})"),
    ("syslog+tcp://:514", "drain URL has no host: expected syslog+tcp://host:port"),
    ("syslog+tcp://logs.example.com", "drain URL has no port: expected syslog+tcp://host:port"),
    ("syslog+tcp://logs.example.com:0", "drain URL has an invalid port: expected a number between 1 and 65535"),
    ("https://user:s3cret@:443/", "drain URL has no host: expected https://host:port"),
]  # fmt: skip


async def test_bad_urls_are_refused_naming_the_problem_and_nothing_is_stored(client: ControllerClient) -> None:
    await client.create_app("example")
    since = await client.last_event_id()
    for url, message in BAD:
        error = await expect_error(400, client.create_drain("example", url))
        assert (error.code, error.message) == ("validation_error", message), url
    body = {"url": "https://h/" + "x" * 2048}
    too_long = await expect_error(400, client.send_model("POST", Drain, "/apps/example/drains", body))
    assert "2048" in too_long.message
    assert await client.list_drains("example") == []
    assert await client.last_event_id() == since, "a refused drain recorded an event"


async def test_a_duplicate_url_is_a_conflict_for_the_same_app_only(client: ControllerClient) -> None:
    await client.create_app("example")
    await client.create_app("other")
    kept = await client.create_drain("example", SYSLOG)
    since = await client.last_event_id()
    dup = await expect_error(409, client.create_drain("example", SYSLOG))
    assert (dup.code, dup.message) == ("conflict", "drain already exists")
    assert await client.last_event_id() == since
    assert [d.id for d in await client.list_drains("example")] == [kept.id]
    assert (await client.create_drain("other", SYSLOG)).id != kept.id


async def test_events_carry_the_drain_without_its_credentials(client: ControllerClient) -> None:
    app = await client.create_app("example")
    since = await client.last_event_id()
    drain = await client.create_drain("example", HTTPS)
    await client.delete_drain("example", drain.id)
    events = await collect(client, 2, app_id=app.id, object_types=["drain", "drain_deletion"], last_event_id=since)
    assert [(e.object_type, e.object_id) for e in events] == [("drain", drain.id), ("drain_deletion", drain.id)]
    for event in events:
        seen = Drain.model_validate(event.data)
        assert seen.url == "https://***@logs.example.com/drain?x=1"
        assert (seen.token, seen.app_id) == (drain.token, app.id)
        assert "s3cret" not in event.model_dump_json()


async def test_deleting_the_app_deletes_its_drains(client: ControllerClient) -> None:
    app = await client.create_app("example")
    drains = [await client.create_drain("example", url) for url in (SYSLOG, HTTPS)]
    since = await client.last_event_id()
    await client.delete_app("example")
    events = await collect(client, 4, app_id=app.id, last_event_id=since)
    assert [e.object_type for e in events] == ["route_deletion", "drain_deletion", "drain_deletion", "app_deletion"]
    assert {e.object_id for e in events[1:3]} == {d.id for d in drains}
    await client.create_app("example")
    assert await client.list_drains("example") == []
    assert (await client.create_drain("example", SYSLOG)).id not in {d.id for d in drains}


# ---------------------------------------------------------------- shipping and resuming (a host faked, a real receiver)


def following_host(lines: list[LogLine], sinces: list[datetime | None]) -> FastAPI:
    """A host's log follow over `lines` (appended to by the test), honouring `since` as hosts do."""
    app = FastAPI()

    @app.get("/host/logs/follow")
    async def follow(app_id: str, since: datetime | None = None) -> StreamingResponse:
        sinces.append(since)

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            while True:
                for line in lines[sent:]:
                    if since is None or line.timestamp > since:
                        yield ndjson.line(line)
                if sent == 0:
                    yield ndjson.LIVE_MARK
                sent = len(lines)
                await asyncio.sleep(0.02)

        return StreamingResponse(body(), media_type="application/x-ndjson")

    return app


def append(lines: list[LogLine], app_id: str, *messages: str) -> None:
    for msg in messages:
        lines.append(LogLine(timestamp=utcnow(), app_id=app_id, job_id="j1", process_type="web", dyno="web.1", msg=msg))


def saved_cursor(settings: Settings) -> datetime | None:
    db = Database(default_url(settings))
    try:
        with db.read() as session:
            return session.scalar(select(DrainRow.cursor))
    finally:
        db.close()


async def test_lines_are_shipped_and_a_restarted_controller_resumes_after_the_saved_cursor(tmp_path: Path) -> None:
    controller, discoverd, host, receiver_port = free_ports(*PORTS, 4)
    settings = Settings(data_dir=tmp_path, ports=Ports(controller=controller, discoverd=discoverd))
    ensure_tls(settings)
    lines: list[LogLine] = []
    sinces: list[datetime | None] = []
    servers = [
        embedded_server(following_host(lines, sinces), "127.0.0.1", host),
        embedded_server(fake_discoverd([f"http://127.0.0.1:{host}"]), "127.0.0.1", discoverd),
    ]
    readies = [asyncio.Event() for _ in servers]
    tasks = [asyncio.create_task(run_server(s, r)) for s, r in zip(servers, readies, strict=True)]
    try:
        await within("the fake discoverd and host", asyncio.gather(*(r.wait() for r in readies)))
        async with receiving(receiver_port) as receiver:
            async with running_controller(settings) as client:
                app = await client.create_app("example")
                append(lines, app.id, "before the drain")
                await client.create_drain("example", f"syslog+tcp://127.0.0.1:{receiver_port}")
                append(lines, app.id, "one", "two", "three")
                await receiver.wait_for(3)
                await eventually(
                    lambda: asyncio.to_thread(lambda: saved_cursor(settings) == lines[-1].timestamp),
                    "the cursor saved while running",
                )
            append(lines, app.id, "four", "five")  # while the controller is down
            restarted = len(sinces)
            async with running_controller(settings):
                await receiver.wait_for(5)
        messages = [frame.decode().split(" - - ", 1)[1] for frame in receiver.frames]
        assert messages == ["one", "two", "three", "four", "five"]
        assert sinces[restarted] == lines[3].timestamp, "the restarted drainer did not follow from its cursor"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=10)
