"""The controller role over real HTTPS with the cluster CA, on a SQLite database in a temp data dir."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI

from encom.api.client import ca_context
from encom.api.errors import ApiError
from encom.api.server import embedded_server, run_server
from encom.api.settings import Ports, Settings
from encom.api.types import (
    App,
    ArtifactCreate,
    Event,
    Instance,
    Job,
    LogLine,
    ProcessType,
    Release,
    ReleaseCreate,
    RouteCreate,
    RouteUpdate,
    utcnow,
)
from encom.bootstrap.tls import ensure_tls
from encom.controller.client import ControllerClient
from tests.integration.conftest import PORTS, running_controller
from tests.integration.deploys import deploy, scheduler
from tests.integration.roles import free_port, free_ports
from tests.unit.test_routes_tls import tls_pair

pytestmark = pytest.mark.integration
T = TypeVar("T")
EVENT_TIMEOUT = 10.0
FAKE_PORTS = (20000, 20999)  # the fake discoverd and hosts of the log test


async def within(what: str, awaitable: Awaitable[T], seconds: float = EVENT_TIMEOUT) -> T:
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        pytest.fail(f"timed out after {seconds:.0f}s waiting for {what}")


async def expect_error(status: int, awaitable: Awaitable[Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        await awaitable
    assert info.value.status == status, f"expected {status}, got {info.value.status}: {info.value}"
    return info.value


async def release_with(client: ControllerClient, app: str, *types: str) -> Release:
    artifact = await client.create_artifact(ArtifactCreate(url=f"/slugs/{app}.tgz"))
    processes = {name: ProcessType(cmd=f"run {name}") for name in types}
    return await client.create_release(ReleaseCreate(app_id=app, artifact_id=artifact.id, processes=processes))


async def collect(client: ControllerClient, count: int, **kwargs: Any) -> list[Event]:
    events: list[Event] = []

    async def run() -> None:
        async for event in client.events(**kwargs):
            events.append(event)
            if len(events) == count:
                return

    try:
        await asyncio.wait_for(run(), EVENT_TIMEOUT)
    except TimeoutError:
        seen = [f"{e.id}:{e.object_type}" for e in events]
        pytest.fail(f"only {len(events)} of {count} events arrived within {EVENT_TIMEOUT:.0f}s: {seen}")
    return events


# ---------------------------------------------------------------- apps


async def test_app_crud_and_default_route(client: ControllerClient) -> None:
    app = await client.create_app("example")
    assert (await client.get_app("example")).id == app.id
    assert (await client.get_app(app.id)).name == "example"
    await client.create_app("another")
    assert [a.name for a in await client.list_apps()] == ["another", "example"]
    routes = await client.list_routes("example")
    assert len(routes) == 1
    assert (routes[0].type, routes[0].domain, routes[0].path, routes[0].service) == (
        "http",
        "example.encom.localhost",
        "/",
        "example-web",
    )
    assert await client.current_release("example") is None


async def test_app_errors(client: ControllerClient, settings: Settings) -> None:
    bad = await expect_error(400, client.send_model("POST", App, "/apps", {"name": "Bad_Name"}))
    assert "lowercase" in bad.message and bad.code == "validation_error"
    await client.create_app("example")
    dup = await expect_error(409, client.create_app("example"))
    assert dup.message == 'app "example" already exists'
    missing = await expect_error(404, client.get_app("nosuch"))
    assert missing.message == 'app "nosuch" not found'
    await expect_error(404, client.current_release("nosuch"))


async def test_every_route_but_ping_needs_the_key(client: ControllerClient, settings: Settings) -> None:
    verify = ca_context(settings.ca_cert_path)
    async with httpx.AsyncClient(base_url=settings.controller_url, verify=verify, timeout=10) as http:
        assert (await http.get("/ping")).status_code == 200
        assert (await http.get("/apps")).status_code == 401
        assert (await http.get("/events/last")).status_code == 401
        wrong = await http.get("/apps", headers={"Authorization": "Bearer " + "0" * 32})
        assert wrong.status_code == 401 and wrong.json()["code"] == "unauthorized"
        assert (await http.get("/apps", auth=("", settings.cluster_key))).status_code == 200


# ---------------------------------------------------------------- keys


def generate_key(directory: Path, kind: str, name: str) -> tuple[str, str]:
    """A new key pair made by ssh-keygen: (public key line, fingerprint as `ssh-keygen -lf` prints it)."""
    path = directory / name
    bits = ["-b", "2048"] if kind == "rsa" else []
    subprocess.run(["ssh-keygen", "-q", "-t", kind, *bits, "-N", "", "-C", f"{name}@test", "-f", str(path)], check=True)
    listing = subprocess.run(["ssh-keygen", "-lf", f"{path}.pub"], check=True, capture_output=True, text=True)
    return (directory / f"{name}.pub").read_text().strip(), listing.stdout.split()[1]


async def test_keys(client: ControllerClient, tmp_path: Path) -> None:
    for kind in ("ed25519", "rsa", "ecdsa"):
        line, fingerprint = generate_key(tmp_path, kind, f"id_{kind}")
        key = await client.add_key(line)
        assert key.fingerprint == fingerprint
        assert key.comment == f"id_{kind}@test"
        dup = await expect_error(409, client.add_key(line))
        assert fingerprint in dup.message
    assert len(await client.list_keys()) == 3

    bad = await expect_error(400, client.add_key("ssh-ed25519 not-base64!!"))
    assert "base64" in bad.message
    await expect_error(400, client.add_key("hello"))
    ed_blob = (await client.list_keys())[0].key.split()[1]
    mismatch = await expect_error(400, client.add_key(f"ssh-rsa {ed_blob}"))
    assert "ssh-ed25519" in mismatch.message


async def test_remove_key_with_slash_or_plus_in_fingerprint(client: ControllerClient, tmp_path: Path) -> None:
    for attempt in range(30):
        line, fingerprint = generate_key(tmp_path, "ed25519", f"k{attempt}")
        if "/" in fingerprint or "+" in fingerprint:
            break
    else:
        pytest.skip("no fingerprint with '/' or '+' in 30 keys")
    await client.add_key(line)
    await client.remove_key(fingerprint)
    assert await client.list_keys() == []
    await expect_error(404, client.remove_key(fingerprint))


# ---------------------------------------------------------------- releases, deploys, formations


async def test_release_versions(client: ControllerClient) -> None:
    await client.create_app("example")
    await client.create_app("other")
    first = await release_with(client, "example", "web")
    second = await release_with(client, "example", "web", "worker")
    elsewhere = await release_with(client, "other", "web")
    assert (first.version, second.version, elsewhere.version) == (1, 2, 1)
    assert [r.version for r in await client.list_releases("example")] == [2, 1]
    assert (await client.get_release(second.id)).processes["worker"].cmd == "run worker"

    missing = ReleaseCreate(app_id="example", artifact_id="nope")
    assert "artifact" in (await expect_error(400, client.create_release(missing))).message
    bad_type = ReleaseCreate(app_id="example", processes={"Web": ProcessType(cmd="x")})
    assert '"Web"' in (await expect_error(400, client.create_release(bad_type))).message
    await expect_error(404, client.create_release(ReleaseCreate(app_id="nosuch")))


async def test_deploy_moves_formation_counts(client: ControllerClient) -> None:
    app = await client.create_app("example")
    v1 = await release_with(client, "example", "web", "worker")
    async with scheduler(client):
        deployment = await deploy(client, "example", v1.id, {"web": 2, "worker": 1})
        assert (deployment.status, deployment.old_release_id, deployment.new_release_id) == ("complete", None, v1.id)
        assert (await client.current_release("example")) == v1

        v2 = await release_with(client, "example", "web", "clock")
        await deploy(client, "example", v2.id)
    assert (await client.get_app("example")).release_id == v2.id
    assert (await client.get_formation("example", v2.id)).processes == {"web": 2, "clock": 0}  # type: ignore[union-attr]
    assert (await client.get_formation("example", v1.id)).processes == {"web": 0, "worker": 0}  # type: ignore[union-attr]
    active = await client.active_formations()
    assert [(f.app.id, f.release.id, f.processes) for f in active] == [(app.id, v2.id, {"web": 2, "clock": 0})]
    assert active[0].artifact is not None and active[0].artifact.id == v2.artifact_id
    expanded = await client.expanded_formation(app.id, v2.id)
    assert expanded.release.version == 2
    assert [d.new_release_id for d in await client.list_deployments("example")] == [v2.id, v1.id]


async def test_formation_errors(client: ControllerClient) -> None:
    await client.create_app("example")
    release = await release_with(client, "example", "web")
    one = await expect_error(400, client.put_formation("example", release.id, {"web": 1, "foo": 1}))
    assert one.message == 'unknown process types: "foo"'
    two = await expect_error(400, client.put_formation("example", release.id, {"b": 1, "a": 1}))
    assert two.message == 'unknown process types: "a", "b"'
    await expect_error(400, client.put_formation("example", release.id, {"web": -1}))
    await expect_error(400, client.deploy("example", release.id, {"foo": 1}))
    await expect_error(404, client.put_formation("example", "no-such-release", {"web": 1}))
    assert await client.get_formation("example", release.id) is None
    formation = await client.put_formation("example", release.id, {"web": 3})
    assert formation.processes == {"web": 3}
    assert [f.processes for f in await client.list_formations("example")] == [{"web": 3}]


# ---------------------------------------------------------------- jobs


def job(app: App, release: Release, job_id: str, state: str) -> Job:
    now = utcnow()
    return Job.model_validate(
        {
            "id": job_id,
            "app_id": app.id,
            "release_id": release.id,
            "type": "web",
            "host_id": "h1",
            "state": state,
            "created_at": now,
            "updated_at": now,
        }
    )


async def test_jobs_upsert_and_list(client: ControllerClient) -> None:
    app = await client.create_app("example")
    release = await release_with(client, "example", "web")
    first = await client.put_job(job(app, release, "h1-aaa", "starting"))
    await client.put_job(job(app, release, "h1-bbb", "up"))
    up = job(app, release, "h1-aaa", "up").model_copy(update={"port": 55000})
    stored = await client.put_job(up)
    assert stored.state == "up" and stored.port == 55000
    assert stored.created_at == first.created_at
    await client.put_job(job(app, release, "h1-bbb", "crashed").model_copy(update={"exit_status": 1}))
    assert [j.id for j in await client.list_jobs("example")] == ["h1-aaa"]
    assert {j.id for j in await client.list_jobs("example", include_ended=True)} == {"h1-aaa", "h1-bbb"}
    assert [j.id for j in await client.all_jobs()] == ["h1-aaa"]
    assert len(await client.all_jobs(include_ended=True)) == 2


# ---------------------------------------------------------------- routes


async def test_routes(client: ControllerClient, settings: Settings) -> None:
    await client.create_app("example")
    early = await expect_error(400, client.create_route("example", RouteCreate(domain="example.localhost", path="api")))
    assert early.message == 'path routes of "example.localhost" need its "/" route first'
    root = await client.create_route("example", RouteCreate(domain="example.localhost"))
    route = await client.create_route("example", RouteCreate(domain="example.localhost", path="api"))
    assert (route.path, route.service) == ("/api/", "example-web")
    dup = await expect_error(409, client.create_route("example", RouteCreate(domain="example.localhost", path="/api/")))
    assert dup.message == "Duplicate route"
    await expect_error(409, client.create_route("example", RouteCreate(domain="example.encom.localhost")))
    bad = await expect_error(400, client.create_route("example", RouteCreate(domain="bad_domain.com")))
    assert "domain" in bad.message
    wildcard = await client.create_route("example", RouteCreate(domain="*.example.localhost", service="other-web"))
    assert wildcard.service == "other-web"

    start = settings.ports.tcp_route_start
    tcp1 = await client.create_route("example", RouteCreate(type="tcp"))
    tcp2 = await client.create_route("example", RouteCreate(type="tcp"))
    assert (tcp1.port, tcp2.port) == (start, start + 1)
    explicit = await client.create_route("example", RouteCreate(type="tcp", port=start + 10))
    assert explicit.port == start + 10
    taken = await expect_error(409, client.create_route("example", RouteCreate(type="tcp", port=start + 10)))
    assert f"tcp port {start + 10} is already routed" in taken.message
    outside = await expect_error(
        400, client.create_route("example", RouteCreate(type="tcp", port=settings.ports.tcp_route_end + 1))
    )
    assert "outside the range" in outside.message
    sticky = await expect_error(400, client.create_route("example", RouteCreate(type="tcp", sticky=True)))
    assert sticky.message == "sticky is for http routes"
    path = await expect_error(400, client.create_route("example", RouteCreate(type="tcp", path="/x")))
    assert path.message == "a path is only for http routes"
    port = await expect_error(400, client.create_route("example", RouteCreate(domain="x.localhost", port=start + 20)))
    assert port.message == "port is only for tcp routes"

    assert len(await client.list_routes("example")) == 7
    # The "/" route goes only after the domain's path routes.
    first = await expect_error(400, client.delete_route("example", root.ref))
    assert first.message == '"example.localhost" still has 1 path route(s): remove them before its "/" route'
    await client.delete_route("example", f"http/{route.id}")
    await client.delete_route("example", root.ref)
    await client.delete_route("example", tcp1.id)
    await expect_error(404, client.delete_route("example", f"tcp/{wildcard.id}"))
    assert (await client.create_route("example", RouteCreate(type="tcp"))).port == start
    assert {r.id for r in await client.all_routes()} >= {tcp2.id, wildcard.id, explicit.id}


async def test_route_certificates(client: ControllerClient) -> None:
    await client.create_app("example")
    cert, key = tls_pair("shop.example.com", "www.example.com")
    since = await client.last_event_id()
    route = await client.create_route("example", RouteCreate(domain="www.example.com", certificate=cert, key=key))
    assert (route.certificate, route.key) == (cert, key)
    [event] = await collect(client, 1, last_event_id=since)
    # The key stays out of the event log (events are kept and streamed); `GET /routes` carries it.
    assert (event.object_type, event.data["certificate"], event.data["key"]) == ("route", cert, None)
    listed = {r.id: r for r in await client.list_routes("example")}
    assert listed[route.id].certificate == cert and listed[route.id].key == key
    assert {r.id: r for r in await client.all_routes()}[route.id].certificate == cert

    wildcard_cert, wildcard_key = tls_pair("*.example.com")
    api = RouteCreate(domain="api.example.com", certificate=wildcard_cert, key=wildcard_key)
    assert (await client.create_route("example", api)).certificate == wildcard_cert
    star = RouteCreate(domain="*.example.com", certificate=wildcard_cert, key=wildcard_key)
    assert (await client.create_route("example", star)).certificate == wildcard_cert
    apex = RouteCreate(domain="example.com", certificate=wildcard_cert, key=wildcard_key)
    wrong = await expect_error(400, client.create_route("example", apex))
    assert wrong.message == 'certificate is not valid for "example.com" (it covers: *.example.com)'
    deep = RouteCreate(domain="a.b.example.com", certificate=wildcard_cert, key=wildcard_key)
    await expect_error(400, client.create_route("example", deep))

    other = RouteCreate(domain="shop.example.com", certificate=cert, key=wildcard_key)
    mismatch = await expect_error(400, client.create_route("example", other))
    assert mismatch.message == "certificate does not match its key"
    garbage = RouteCreate(domain="shop.example.com", certificate="-----BEGIN CERTIFICATE-----\nxx\n", key=key)
    assert "not a PEM certificate" in (await expect_error(400, client.create_route("example", garbage))).message
    bad_key = RouteCreate(domain="shop.example.com", certificate=cert, key="nope")
    assert (await expect_error(400, client.create_route("example", bad_key))).message == "key is not a PEM private key"
    alone = await expect_error(
        400, client.create_route("example", RouteCreate(domain="shop.example.com", certificate=cert))
    )
    assert alone.message == "a certificate needs its key"
    keyless = await expect_error(400, client.create_route("example", RouteCreate(domain="shop.example.com", key=key)))
    assert keyless.message == "a key needs its certificate"
    tcp = await expect_error(400, client.create_route("example", RouteCreate(type="tcp", certificate=cert, key=key)))
    assert tcp.message == "certificates are for http routes"
    assert all(r.domain != "shop.example.com" for r in await client.list_routes("example"))  # nothing stored


async def test_route_update(client: ControllerClient) -> None:
    await client.create_app("example")
    await client.create_app("other")
    route = await client.create_route("example", RouteCreate(domain="www.example.com"))
    tcp = await client.create_route("example", RouteCreate(type="tcp"))
    since = await client.last_event_id()

    updated = await client.update_route("example", route.ref, RouteUpdate(service="example-admin-web", sticky=True))
    assert (updated.id, updated.service, updated.sticky, updated.certificate) == (
        route.id, "example-admin-web", True, None,
    )  # fmt: skip
    assert updated.updated_at > route.updated_at and updated.created_at == route.created_at
    cert, key = tls_pair("www.example.com")
    with_cert = await client.update_route("example", route.id, RouteUpdate(certificate=cert, key=key))
    assert (with_cert.certificate, with_cert.key, with_cert.service, with_cert.sticky) == (
        cert, key, "example-admin-web", True,
    )  # fmt: skip
    unchanged = await client.update_route("example", route.id, RouteUpdate(sticky=False))
    assert (unchanged.certificate, unchanged.sticky) == (cert, False)
    removed = await client.update_route("example", route.id, RouteUpdate(certificate="", key=""))
    assert (removed.certificate, removed.key) == (None, None)

    events = await collect(client, 4, last_event_id=since)
    assert [(e.object_type, e.object_id) for e in events] == [("route", route.id)] * 4
    assert [e.data["sticky"] for e in events] == [True, True, False, False]
    assert events[1].data["certificate"] == cert and events[3].data["certificate"] is None
    assert {r.id: r for r in await client.all_routes()}[route.id] == removed

    wrong_cert, wrong_key = tls_pair("elsewhere.com")
    wrong = await expect_error(
        400, client.update_route("example", route.id, RouteUpdate(certificate=wrong_cert, key=wrong_key))
    )
    assert wrong.message == 'certificate is not valid for "www.example.com" (it covers: elsewhere.com)'
    half = await expect_error(400, client.update_route("example", route.id, RouteUpdate(certificate="", key=key)))
    assert half.message == "a key needs its certificate"
    assert (await expect_error(400, client.update_route("example", tcp.ref, RouteUpdate(sticky=True)))).message == (
        "sticky is for http routes"
    )
    tcp_cert = await expect_error(400, client.update_route("example", tcp.id, RouteUpdate(certificate=cert, key=key)))
    assert tcp_cert.message == "certificates are for http routes"
    assert (await client.update_route("example", tcp.ref, RouteUpdate(service="example-db"))).service == "example-db"
    empty = await expect_error(400, client.update_route("example", route.id, RouteUpdate(service=" ")))
    assert "service" in empty.message

    missing = await expect_error(404, client.update_route("example", "http/no-such-id", RouteUpdate(sticky=True)))
    assert missing.message == 'route "http/no-such-id" not found'
    await expect_error(404, client.update_route("other", route.ref, RouteUpdate(sticky=True)))
    await expect_error(404, client.update_route("example", f"tcp/{route.id}", RouteUpdate(sticky=True)))
    await expect_error(404, client.update_route("nosuch", route.ref, RouteUpdate(sticky=True)))
    assert {r.id: r for r in await client.all_routes()}[route.id] == removed  # failed updates changed nothing


async def test_redirect_https_follows_the_app_meta(client: ControllerClient) -> None:
    app = await client.create_app("example")
    await client.create_app("other")
    default = (await client.list_routes("example"))[0]
    www = await client.create_route("example", RouteCreate(domain="www.example.com"))
    tcp = await client.create_route("example", RouteCreate(type="tcp"))
    assert not any(r.redirect_https for r in await client.all_routes())

    since = await client.last_event_id()
    await client.update_app("example", {"redirect_https": "true"})
    events = await collect(client, 3, last_event_id=since)
    assert [e.object_type for e in events] == ["app", "route", "route"]
    assert {e.object_id: e.data["redirect_https"] for e in events[1:]} == {default.id: True, www.id: True}
    assert all(e.app_id == app.id for e in events)
    listed = {r.id: r.redirect_https for r in await client.all_routes()}
    assert listed[default.id] and listed[www.id] and not listed[tcp.id]
    assert not any(r.redirect_https for r in await client.list_routes("other"))
    created = await client.create_route("example", RouteCreate(domain="new.example.com"))
    assert created.redirect_https

    # Setting the same value again changes no route; another meta key neither.
    since = await client.last_event_id()
    await client.update_app("example", {"redirect_https": "true", "strategy": "all-at-once"})
    await client.update_app("example", {"redirect_https": None})
    events = await collect(client, 5, last_event_id=since)
    assert [e.object_type for e in events] == ["app", "app", "route", "route", "route"]
    assert not any(e.data["redirect_https"] for e in events[2:])
    assert not any(r.redirect_https for r in await client.list_routes("example"))

    bad = await expect_error(400, client.update_app("example", {"redirect_https": "yes"}))
    assert bad.message == 'redirect_https must be "true" or "false", not "yes"'
    await client.update_app("example", {"redirect_https": "false"})
    assert not any(r.redirect_https for r in await client.list_routes("example"))


# ---------------------------------------------------------------- app deletion


async def test_app_delete_cascades(client: ControllerClient) -> None:
    app = await client.create_app("example")
    release = await release_with(client, "example", "web")
    async with scheduler(client):
        await deploy(client, "example", release.id, {"web": 2})
    await client.create_route("example", RouteCreate(type="tcp"))
    since = await client.last_event_id()

    deleted = await client.delete_app("example")
    assert (deleted.app.id, deleted.deleted_routes, deleted.deleted_releases) == (app.id, 2, 1)
    events = await collect(client, 4, last_event_id=since)
    assert [e.object_type for e in events] == ["formation", "route_deletion", "route_deletion", "app_deletion"]
    assert events[0].data["processes"] == {"web": 0}
    await expect_error(404, client.get_app("example"))
    await expect_error(404, client.get_release(release.id))
    assert await client.active_formations() == []
    assert await client.all_routes() == []

    again = await client.create_app("example")
    assert again.id != app.id
    assert len(await client.list_routes("example")) == 1


# ---------------------------------------------------------------- events


async def test_events_resume_with_last_event_id_misses_nothing(client: ControllerClient) -> None:
    since = await client.last_event_id()
    await client.create_app("example")  # app + route
    routes = 40

    async def produce() -> None:
        for n in range(routes):
            await client.create_route("example", RouteCreate(domain=f"r{n}.example.localhost"))

    producer = asyncio.create_task(produce())
    first = await collect(client, 10, last_event_id=since)
    rest = await collect(client, 2 + routes - 10, last_event_id=first[-1].id)
    await within("the producer", producer)
    ids = [e.id for e in first + rest]
    assert ids == list(range(since + 1, since + 3 + routes))
    assert [e.object_type for e in first[:2]] == ["app", "route"]
    assert await client.last_event_id() == ids[-1]


async def test_events_filters_and_since_id(client: ControllerClient) -> None:
    one = await client.create_app("one")
    await client.create_app("two")
    only_one = await collect(client, 2, app_id=one.id, last_event_id=0)
    assert {e.app_id for e in only_one} == {one.id}
    by_name = await collect(client, 2, app_id="one", last_event_id=0)
    assert [e.id for e in by_name] == [e.id for e in only_one]
    apps = await collect(client, 2, object_types=["app"], last_event_id=0)
    assert [e.data["name"] for e in apps] == ["one", "two"]

    async def first_via_since_id() -> Any:
        async for msg in client.sse("/events", params={"since_id": only_one[0].id, "object_types": "app"}):
            return msg

    msg = await within("an event after since_id", first_via_since_id())
    assert msg.id is not None and int(msg.id) > only_one[0].id
    assert Event.model_validate_json(msg.data).data["name"] == "two"
    await expect_error(400, client.get_json("/events", params={"object_types": "nonsense"}))


# ---------------------------------------------------------------- restart


async def test_data_survives_a_restart(settings: Settings, tmp_path: Path) -> None:
    line, fingerprint = generate_key(tmp_path, "ed25519", "id_restart")
    async with running_controller(settings) as client:
        app = await client.create_app("example")
        release = await release_with(client, "example", "web")
        async with scheduler(client):
            await deploy(client, "example", release.id, {"web": 1})
        await client.add_key(line)
        last = await client.last_event_id()
    async with running_controller(settings) as client:
        assert (await client.get_app("example")).id == app.id
        assert await client.current_release("example") == release
        assert [f.processes for f in await client.active_formations()] == [{"web": 1}]
        assert [k.fingerprint for k in await client.list_keys()] == [fingerprint]
        assert await client.last_event_id() == last
        await client.create_app("later")
        later = await collect(client, 1, last_event_id=last)
        assert later[0].id == last + 1 and later[0].object_type == "app"
    assert (settings.data_dir / "controller" / "controller.db").exists()


# ---------------------------------------------------------------- logs (fan-in from hosts found in discoverd)


def fake_discoverd(host_urls: list[str]) -> FastAPI:
    app = FastAPI()

    @app.get("/services/encom-host/instances")
    def instances() -> list[Instance]:
        return [
            Instance(
                id=f"h{n}", service="encom-host", addr="127.0.0.1:1", index=n, meta={"url": url}, created_at=utcnow()
            )
            for n, url in enumerate(host_urls)
        ]

    return app


def fake_host(name: str, base: datetime, offsets: list[int]) -> FastAPI:
    app = FastAPI()

    @app.get("/host/logs")
    def logs(app_id: str, lines: int) -> list[LogLine]:
        made = [
            LogLine(
                timestamp=base + timedelta(seconds=s),
                app_id=app_id,
                job_id=name,
                process_type="web",
                dyno="web.1",
                msg=f"{name}-{s}",
            )
            for s in offsets
        ]
        return made[-lines:]

    return app


async def test_app_log_merges_hosts(tmp_path: Path) -> None:
    discoverd_port, *host_ports, dead_port = free_ports(*FAKE_PORTS, 4)
    settings = Settings(data_dir=tmp_path, ports=Ports(controller=free_port(*PORTS), discoverd=discoverd_port))
    ensure_tls(settings)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    dead_host = f"http://127.0.0.1:{dead_port}"
    servers = [
        embedded_server(fake_host("a", base, [0, 2, 4]), "127.0.0.1", host_ports[0]),
        embedded_server(fake_host("b", base, [1, 3]), "127.0.0.1", host_ports[1]),
        embedded_server(
            fake_discoverd([*(f"http://127.0.0.1:{p}" for p in host_ports), dead_host]), "127.0.0.1", discoverd_port
        ),
    ]
    readies = [asyncio.Event() for _ in servers]
    tasks = [asyncio.create_task(run_server(s, r)) for s, r in zip(servers, readies, strict=True)]
    try:
        await within("the fake discoverd and hosts", asyncio.gather(*(r.wait() for r in readies)))
        async with running_controller(settings) as client:
            await client.create_app("example")
            lines = await client.app_log("example", lines=4)
            assert [line.msg for line in lines] == ["b-1", "a-2", "b-3", "a-4"]
            await expect_error(400, client.app_log("example", lines=0))
            await expect_error(400, client.app_log("example", lines=10001))
            await expect_error(404, client.app_log("nosuch"))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=10)


# ---------------------------------------------------------------- concurrency


async def test_concurrent_writers_get_distinct_versions_and_one_name(client: ControllerClient) -> None:
    await client.create_app("example")
    created = await within(
        "20 concurrent releases", asyncio.gather(*(release_with(client, "example") for _ in range(20)))
    )
    assert sorted(r.version for r in created) == list(range(1, 21))
    results = await within(
        "10 concurrent creates of one app",
        asyncio.gather(*(client.create_app("race") for _ in range(10)), return_exceptions=True),
    )
    assert sum(isinstance(r, App) for r in results) == 1
    assert all(isinstance(r, ApiError) and r.status == 409 for r in results if not isinstance(r, App))
