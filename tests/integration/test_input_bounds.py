"""Input bounds against a real controller: each refusal is a 400 naming the rule, and nothing stored changes
(no event recorded: every stored change records one in the same transaction)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from encom.api.client import ca_context
from encom.api.settings import Settings
from encom.api.types import (
    App,
    ArtifactCreate,
    ProcessType,
    Release,
    ReleaseCreate,
    Route,
    RouteCreate,
    RouteUpdate,
)
from encom.controller.client import ControllerClient
from tests.integration.test_controller import expect_error, release_with

pytestmark = pytest.mark.integration

HOSTILE_ENV_KEYS = ["", "A=B", "A\0B", "K" * 10_000, "1A", "A\n"]
HOSTILE_SERVICES = ["evil\n", "evil\nbackend x", "a#b", "../etc", "web web", "Evil-web", ""]


@asynccontextmanager
async def unchanged(client: ControllerClient) -> AsyncIterator[None]:
    """The block stores nothing: the newest event id is the same after it."""
    before = await client.last_event_id()
    yield
    assert await client.last_event_id() == before, "a refused request stored something"


async def refused(client: ControllerClient, call: Awaitable[Any], *rule: str) -> str:
    async with unchanged(client):
        error = await expect_error(400, call)
    assert error.code == "validation_error"
    for words in rule:
        assert words in error.message, f"{words!r} not in {error.message!r}"
    return error.message


@pytest.fixture
async def app(client: ControllerClient) -> App:
    return await client.create_app("example")


@pytest.fixture
async def release(client: ControllerClient, app: App) -> Release:
    return await release_with(client, "example", "web", "worker")


async def test_counts_above_the_cluster_limit(client: ControllerClient, app: App, release: Release) -> None:
    await client.put_formation("example", release.id, {"web": 2})
    for counts in ({"web": 10**30}, {"web": 101}, {"web": 1, "worker": 101}):
        await refused(client, client.put_formation("example", release.id, counts), "max_processes_per_type")
        await refused(client, client.deploy("example", release.id, counts), "max_processes_per_type")
    formation = await client.get_formation("example", release.id)
    assert formation is not None and formation.processes == {"web": 2}
    assert await client.list_deployments("example") == []
    assert (await client.put_formation("example", release.id, {"web": 100})).processes == {"web": 100}


async def test_hostile_env_keys_and_sizes(client: ControllerClient, app: App, release: Release) -> None:
    body = ReleaseCreate(app_id=app.id, artifact_id=release.artifact_id, processes=release.processes)
    for key in HOSTILE_ENV_KEYS:
        await refused(client, client.create_release(body.model_copy(update={"env": {key: "x"}})), "env key")
    web = release.processes["web"]
    bad_process = {"web": web.model_copy(update={"env": {"A=B": "1"}})}
    await refused(client, client.create_release(body.model_copy(update={"processes": bad_process})), "web env")
    big_value = {"BIG": "x" * (2 << 20)}
    await refused(client, client.create_release(body.model_copy(update={"env": big_value})), "32 KiB")
    many = {f"V{i}": "x" * 30_000 for i in range(9)}
    await refused(client, client.create_release(body.model_copy(update={"env": many})), "256 KiB")
    assert [r.id for r in await client.list_releases("example")] == [release.id]
    fine = await client.create_release(body.model_copy(update={"env": {"DATABASE_URL": "x" * 32_768, "_A1": ""}}))
    assert fine.env["_A1"] == ""


async def test_hostile_commands_and_process_types(client: ControllerClient, app: App, release: Release) -> None:
    long = {"web": ProcessType(cmd="x" * 40_000)}
    await refused(client, client.create_release(ReleaseCreate(app_id=app.id, processes=long)), "web: the command")
    many = {f"t{i}": ProcessType(cmd="x") for i in range(51)}
    await refused(client, client.create_release(ReleaseCreate(app_id=app.id, processes=many)), "50 process types")


async def test_hostile_route_services_and_paths(client: ControllerClient, app: App) -> None:
    (default,) = await client.list_routes("example")
    for service in HOSTILE_SERVICES:
        create = RouteCreate(domain="other.example.localhost", service=service)
        await refused(client, client.create_route("example", create), "invalid route service")
        await refused(client, client.update_route("example", default.ref, RouteUpdate(service=service)), "service")
    long_path = RouteCreate(domain=f"example.{'encom.localhost'}", path="/" + "a" * 10_000)
    await refused(client, client.create_route("example", long_path), "at most 2048 characters")
    assert await client.list_routes("example") == [default]
    kept = await client.create_route("example", RouteCreate(domain="api.example.localhost", service="example-api-web"))
    assert kept.service == "example-api-web"


async def test_artifact_urls(client: ControllerClient) -> None:
    for url in ("", "slugs/x.tgz", "/slugs/../x.tgz", "/slugs/a\n.tgz"):
        await refused(client, client.create_artifact(ArtifactCreate(url=url)), "artifact URL")
    await refused(client, client.create_artifact(ArtifactCreate(url="/s/x.tgz", meta={"a b": "c"})), "invalid key")
    assert (await client.create_artifact(ArtifactCreate(url="/slugs/a/b.tgz"))).url == "/slugs/a/b.tgz"


async def test_other_fields(client: ControllerClient, app: App, settings: Settings) -> None:
    await refused(client, client.update_app("example", {"k": "v" * 2000}), "1024")
    await refused(client, client.update_app("example", {"a\nb": "v"}), "invalid key")
    verify = ca_context(settings.ca_cert_path)
    headers = {"Authorization": f"Bearer {settings.cluster_key}"}
    async with httpx.AsyncClient(base_url=settings.controller_url, verify=verify, headers=headers) as http:
        before = await client.last_event_id()
        lines = await http.get("/apps/example/log", params={"lines": 10**9})
        assert lines.status_code == 400 and "lines" in lines.json()["message"]
        since = await http.get("/events", params={"since_id": 10**30})
        assert since.status_code == 400 and "since_id" in since.json()["message"]
        header = await http.get("/events", headers={"Last-Event-ID": str(10**30)})
        assert header.status_code == 400 and "Last-Event-ID" in header.json()["message"]
        huge = await http.post("/releases", content=b"{" + b" " * (5 << 20) + b"}")
        assert huge.status_code == 400 and "larger than 4194304 bytes" in huge.json()["message"]

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(80):
                yield b" " * (64 << 10)

        streamed = await http.post("/apps", content=chunks())  # no Content-Length: counted as it comes
        assert streamed.status_code == 400 and streamed.json()["code"] == "validation_error"
        job = {"id": "j", "app_id": app.id, "release_id": "r", "type": "web", "state": "up", "port": 10**30}
        stamps = {"created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}
        assert (await http.put("/jobs/j", json=job | stamps)).status_code == 400
        assert await client.last_event_id() == before
    assert isinstance(await client.create_route("example", RouteCreate(domain="x.example.localhost")), Route)
