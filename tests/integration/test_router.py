"""The router against a real HAProxy and real backends on loopback ports 24000-24999."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from encom.api.procs import process_alive
from encom.api.settings import Ports, Settings
from encom.api.types import Route
from encom.router.config import Options
from encom.router.haproxy import ConfigError, HAProxyError
from encom.router.router import Router
from tests.integration.roles import eventually, free_port, free_ports, running_role, within

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists("/usr/sbin/haproxy"), reason="needs HAProxy"),
]

HTTP_PORT = 24080
HTTPS_PORT = 24443
PORTS = (24100, 24999)  # backends and TCP routes
ROLE_PORTS = (24000, 24099)  # role APIs of the wiring test


# ---------------------------------------------------------------- helpers


_created = datetime(2026, 1, 1, tzinfo=UTC)


def http_route(domain: str, service: str, path: str = "/", app_id: str = "app") -> Route:
    global _created
    _created += timedelta(seconds=1)
    rid = f"{domain}{path}".replace("/", "_")
    return Route(
        id=rid, app_id=app_id, type="http", domain=domain, path=path, service=service,
        created_at=_created, updated_at=_created,
    )  # fmt: skip


def tcp_route(port: int, service: str) -> Route:
    return Route(
        id=f"tcp-{port}", app_id="app", type="tcp", port=port, service=service,
        created_at=_created, updated_at=_created,
    )  # fmt: skip


class Backend:
    """A tiny HTTP/1.1 server (keep-alive) answering JSON with its own port and the headers it received."""

    def __init__(self) -> None:
        self.port = 0
        self.addr = ""
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int | None = None) -> Backend:
        self.port = port or free_port(*PORTS)
        self.addr = f"127.0.0.1:{self.port}"
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                lines = head.split("\r\n")[1:]
                headers = dict(line.split(": ", 1) for line in lines if ": " in line)
                body = json.dumps({"port": self.port, "headers": {k.lower(): v for k, v in headers.items()}}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.writers):
                writer.close()
            await within(self.server.wait_closed(), f"backend {self.port} to close")
            self.server = None


class EchoServer:
    def __init__(self) -> None:
        self.port = free_port(*PORTS)
        self.addr = f"127.0.0.1:{self.port}"
        self.server: asyncio.Server | None = None

    async def start(self) -> EchoServer:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(4096):
                    writer.write(data)
                    await writer.drain()
            writer.close()

        self.server = await asyncio.start_server(echo, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await within(self.server.wait_closed(), "echo server to close")


def haproxy_children() -> list[str]:
    """HAProxy processes (live or zombie) that are children of this test process."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            if fields.get("PPid", "").strip() == str(os.getpid()) and "haproxy" in fields.get("Name", ""):
                found.append(f"{status.parent.name} {fields['State'].strip()}")
    return found


@pytest.fixture(autouse=True)
def no_haproxy_left() -> Iterator[None]:
    # Only what this test started: earlier whole-cluster tests can leave HAProxy re-parented to this process.
    before = {entry.split()[0] for entry in haproxy_children()}
    yield
    left = [entry for entry in haproxy_children() if entry.split()[0] not in before]
    assert left == [], "every HAProxy started must be stopped and reaped"


MakeBackends = Callable[[int], Awaitable[list[Backend]]]


@pytest.fixture
async def backends() -> AsyncIterator[MakeBackends]:
    started: list[Backend] = []

    async def make(n: int) -> list[Backend]:
        new = [await Backend().start() for _ in range(n)]
        started.extend(new)
        return new

    try:
        yield make
    finally:
        for backend in started:
            await backend.stop()


def options(tmp_path: Path, **kw: object) -> Options:
    return Options(dir=tmp_path / "router", http_port=HTTP_PORT, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[Router]:
    (tmp_path / "router").mkdir()
    r = Router(options(tmp_path))
    await within(r.start(), "haproxy to start")
    try:
        yield r
    finally:
        await within(r.close(), "haproxy to stop")
        assert not r.haproxy.running()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{HTTP_PORT}", timeout=5.0) as c:
        yield c


async def get(client: httpx.AsyncClient, host: str, path: str = "/") -> httpx.Response:
    return await client.get(path, headers={"Host": host})


async def ports_seen(client: httpx.AsyncClient, host: str, n: int) -> Counter[int]:
    seen: Counter[int] = Counter()
    for _ in range(n):
        response = await get(client, host)
        assert response.status_code == 200, response.text
        seen[response.json()["port"]] += 1
    return seen


class Load:
    """A steady request loop (a few concurrent clients) until stopped or `limit` requests were made."""

    def __init__(self, client: httpx.AsyncClient, host: str, workers: int = 4, limit: int = 20000) -> None:
        self.client = client
        self.host = host
        self.limit = limit
        self.results: list[int | str] = []
        self.stopping = asyncio.Event()
        self.tasks = [asyncio.create_task(self._work()) for _ in range(workers)]

    async def _work(self) -> None:
        while not self.stopping.is_set() and len(self.results) < self.limit:
            try:
                response = await get(self.client, self.host)
                self.results.append(response.status_code)
            except httpx.HTTPError as exc:
                self.results.append(repr(exc))

    async def wait_for(self, n: int) -> None:
        async def enough() -> bool:
            return len(self.results) >= n

        await eventually(enough, f"{n} requests through the load loop")

    async def stop(self) -> list[int | str]:
        self.stopping.set()
        await within(asyncio.gather(*self.tasks), "the load loop to stop")
        return self.results


# ---------------------------------------------------------------- routing


async def test_hosts_route_to_services_randomly(
    router: Router, client: httpx.AsyncClient, backends: MakeBackends
) -> None:
    a = await backends(3)
    b = await backends(1)
    await router.set_routes([http_route("a.test", "a-web"), http_route("b.test", "b-web")])
    for backend in a:
        await router.backend_up("a-web", backend.addr)
    await router.backend_up("b-web", b[0].addr)

    seen = await ports_seen(client, "a.test", 30)
    assert set(seen) == {x.port for x in a}, f"30 requests should reach all 3 servers: {seen}"
    assert set(await ports_seen(client, "B.Test:80", 5)) == {b[0].port}  # case and port ignored


async def test_unknown_host_404_and_no_servers_503(router: Router, client: httpx.AsyncClient) -> None:
    await router.set_routes([http_route("empty.test", "empty-web")])
    unknown = await get(client, "nope.test")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "text/plain"
    assert unknown.text == "No such app\n"
    empty = await get(client, "empty.test")
    assert empty.status_code == 503
    assert empty.text == "Service Unavailable\n"


async def test_forwarded_headers(router: Router, client: httpx.AsyncClient, backends: MakeBackends) -> None:
    (a,) = await backends(1)
    await router.set_routes([http_route("h.test", "h-web")])
    await router.backend_up("h-web", a.addr)
    headers = (await get(client, "h.test")).json()["headers"]
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-port"] == str(HTTP_PORT)
    assert headers["x-request-id"]
    assert headers["x-request-start"].startswith("t=")


async def test_path_and_wildcard_routes(router: Router, client: httpx.AsyncClient, backends: MakeBackends) -> None:
    root, api, wild = await backends(3)
    await router.set_routes(
        [http_route("p.test", "root-web"), http_route("p.test", "api-web", "/api"), http_route("*.w.test", "w-web")]
    )
    await router.backend_up("root-web", root.addr)
    await router.backend_up("api-web", api.addr)
    await router.backend_up("w-web", wild.addr)
    assert (await get(client, "p.test", "/api/x")).json()["port"] == api.port
    assert (await get(client, "p.test", "/apix")).json()["port"] == root.port
    assert (await get(client, "p.test", "/")).json()["port"] == root.port
    assert (await get(client, "deep.x.w.test")).json()["port"] == wild.port
    assert (await get(client, "w.test")).status_code == 404


# ---------------------------------------------------------------- runtime changes and reloads


async def test_server_changes_use_runtime_api_without_errors(
    router: Router, client: httpx.AsyncClient, backends: MakeBackends
) -> None:
    servers = await backends(4)
    await router.set_routes([http_route("busy.test", "busy-web")])
    for backend in servers[:2]:
        await router.backend_up("busy-web", backend.addr)
    worker = await router.haproxy.worker_pid()
    reloads = router.reloads

    load = Load(client, "busy.test")
    await load.wait_for(50)
    for step in range(12):
        joining, leaving = servers[(step + 2) % 4], servers[step % 4]
        await router.backend_up("busy-web", joining.addr)
        await load.wait_for(50 + 40 * (2 * step + 1))
        await router.backend_down("busy-web", leaving.addr)
        await load.wait_for(50 + 40 * (2 * step + 2))
    results = await load.stop()

    assert await router.haproxy.worker_pid() == worker, "a server change must not reload HAProxy"
    assert router.reloads == reloads
    assert Counter(results) == {200: len(results)}, Counter(results)
    # after step s the live pair is servers (s+1)%4 and (s+2)%4
    assert set(await ports_seen(client, "busy.test", 20)) == {servers[0].port, servers[1].port}

    async def only_live_servers_left() -> bool:  # removed ones still holding connections are deleted later
        return set((await router.haproxy.runtime.servers("h_busy-web")).values()) == {servers[0].addr, servers[1].addr}

    await eventually(only_live_servers_left, "removed servers to be deleted from HAProxy")


async def test_route_on_existing_backend_uses_runtime_api(
    router: Router, client: httpx.AsyncClient, backends: MakeBackends
) -> None:
    (a,) = await backends(1)
    await router.set_routes([http_route("one.test", "one-web")])
    await router.backend_up("one-web", a.addr)
    worker = await router.haproxy.worker_pid()
    await router.add_route(http_route("alias.test", "one-web"))
    assert (await get(client, "alias.test")).json()["port"] == a.port
    await router.remove_route(http_route("alias.test", "one-web").id)
    assert (await get(client, "alias.test")).status_code == 404
    assert await router.haproxy.worker_pid() == worker


async def test_new_services_reload_under_load_without_errors(
    router: Router, client: httpx.AsyncClient, backends: MakeBackends
) -> None:
    (steady,) = await backends(1)
    others = await backends(3)
    await router.set_routes([http_route("steady.test", "steady-web")])
    await router.backend_up("steady-web", steady.addr)
    worker = await router.haproxy.worker_pid()
    reloads = router.reloads

    load = Load(client, "steady.test")
    await load.wait_for(50)
    for i, backend in enumerate(others):
        async with router.hold():
            await router.add_route(http_route(f"new{i}.test", f"new{i}-web"))
            await router.backend_up(f"new{i}-web", backend.addr)
        await load.wait_for(50 + 50 * (i + 1))
        assert (await get(client, f"new{i}.test")).json()["port"] == backend.port
    await router.remove_route(http_route("new0.test", "new0-web").id)
    await load.wait_for(len(load.results) + 50)
    results = await load.stop()

    assert router.reloads == reloads + 4
    assert await router.haproxy.worker_pid() != worker
    assert Counter(results) == {200: len(results)}, Counter(results)
    assert (await get(client, "new0.test")).status_code == 404


async def test_dead_backend_is_retried_on_a_live_one(
    router: Router, client: httpx.AsyncClient, backends: MakeBackends
) -> None:
    live, dead = await backends(2)
    await dead.stop()  # its port now refuses connections
    await router.set_routes([http_route("half.test", "half-web")])
    await router.backend_up("half-web", live.addr)
    await router.backend_up("half-web", dead.addr)
    assert set(await ports_seen(client, "half.test", 30)) == {live.port}


async def test_invalid_config_is_refused_and_old_one_keeps_serving(
    router: Router, client: httpx.AsyncClient, backends: MakeBackends
) -> None:
    (a,) = await backends(1)
    await router.set_routes([http_route("keep.test", "keep-web")])
    await router.backend_up("keep-web", a.addr)
    worker = await router.haproxy.worker_pid()
    good = router.options.config_path.read_text()

    with pytest.raises(ConfigError):
        await router.haproxy.reload(good + "\nbackend broken\n    balance nonsense\n")

    assert router.options.config_path.read_text() == good
    assert await router.haproxy.worker_pid() == worker
    assert (await get(client, "keep.test")).json()["port"] == a.port


async def test_failed_reload_keeps_serving_and_runtime_changes(
    router: Router, client: httpx.AsyncClient, backends: MakeBackends
) -> None:
    """A TCP route on a port someone else holds passes `haproxy -c` but cannot bind: the reload fails."""
    a, b = await backends(2)
    await router.set_routes([http_route("keep.test", "keep-web")])
    await router.backend_up("keep-web", a.addr)
    worker = await router.haproxy.worker_pid()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        await router.add_route(tcp_route(taken.getsockname()[1], "db"))
        assert router.last_error is not None
        await router.backend_up("keep-web", b.addr)
        assert await router.haproxy.worker_pid() == worker
        assert set(await ports_seen(client, "keep.test", 20)) == {a.port, b.port}
        await router.remove_route(tcp_route(taken.getsockname()[1], "db").id)

        # The same failure inside HAProxy (the driver, without the router's port check): the master keeps the
        # running worker.
        config = router.options.config_path.read_text()
        port = taken.getsockname()[1]
        with pytest.raises(HAProxyError, match="failed to reload"):
            await router.haproxy.reload(config + f"\nfrontend taken\n    mode tcp\n    bind 127.0.0.1:{port}\n")
        assert await router.haproxy.worker_pid() == worker
        assert (await get(client, "keep.test")).status_code == 200


async def test_tcp_route_echo(router: Router) -> None:
    echo = await EchoServer().start()
    port = free_port(*PORTS)
    try:
        await router.set_routes([tcp_route(port, "echo")])
        await router.backend_up("echo", echo.addr)
        reader, writer = await within(asyncio.open_connection("127.0.0.1", port), "the TCP route to accept")
        writer.write(b"hello over tcp\n")
        assert await within(reader.readline(), "the echo") == b"hello over tcp\n"
        writer.close()
    finally:
        await echo.stop()


# ---------------------------------------------------------------- process life


async def test_haproxy_is_restarted_when_it_dies(
    router: Router, client: httpx.AsyncClient, backends: MakeBackends
) -> None:
    (a,) = await backends(1)
    await router.set_routes([http_route("phoenix.test", "phoenix-web")])
    await router.backend_up("phoenix-web", a.addr)
    old = router.haproxy.pid
    assert old is not None
    # A crashing worker takes its master down with it (SIGKILL on the master itself would leave the worker to
    # this machine's PID 1, which does not reap).
    os.kill(await router.haproxy.worker_pid(), signal.SIGKILL)

    async def serving_again() -> bool:
        if router.haproxy.pid in (None, old):
            return False
        with contextlib.suppress(httpx.HTTPError):
            return (await get(client, "phoenix.test")).status_code == 200
        return False

    await eventually(serving_again, "HAProxy to be restarted with the routes and servers")
    assert not process_alive(old)


async def test_detach_leaves_haproxy_running_for_adoption(
    tmp_path: Path, client: httpx.AsyncClient, backends: MakeBackends
) -> None:
    (tmp_path / "router").mkdir()
    a, b = await backends(2)
    first = Router(options(tmp_path))
    await within(first.start(), "haproxy to start")
    master = first.haproxy.pid
    assert master is not None
    second = Router(options(tmp_path))
    try:
        await first.set_routes([http_route("stay.test", "stay-web")])
        await first.backend_up("stay-web", a.addr)
        await within(first.close(detach=True), "the router to let go")
        assert process_alive(master)
        assert (await get(client, "stay.test")).json()["port"] == a.port

        await within(second.start(), "the router to adopt haproxy")
        assert second.haproxy.pid == master and second.haproxy.adopted
        async with second.hold():
            await second.set_routes([http_route("stay.test", "stay-web")])
            await second.set_backends("stay-web", [b.addr])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{HTTP_PORT}", timeout=5.0) as fresh:
            # (a connection kept alive across the reload gets one last answer from the old worker)
            assert set(await ports_seen(fresh, "stay.test", 10)) == {b.port}
    finally:
        await within(second.close(), "haproxy to stop")
        if process_alive(master):
            os.kill(master, signal.SIGKILL)
            pytest.fail("the adopted HAProxy was not stopped")


async def test_https_with_sni_and_alpn(tmp_path: Path, backends: MakeBackends) -> None:
    from encom.bootstrap.tls import create_ca, issue_cert

    tls = tmp_path / "tls"
    tls.mkdir()
    create_ca(tls / "ca.pem", tls / "ca-key.pem")
    issue_cert(tls / "ca.pem", tls / "ca-key.pem", ["encom.test", "*.encom.test"], tls / "c.pem", tls / "k.pem")
    combined = tls / "combined.pem"
    combined.write_text((tls / "c.pem").read_text() + (tls / "k.pem").read_text())
    (tmp_path / "router").mkdir()
    r = Router(options(tmp_path, https_port=HTTPS_PORT, cert_pem=combined))
    (a,) = await backends(1)
    await within(r.start(), "haproxy to start")
    try:
        await r.set_routes([http_route("app.encom.test", "app-web")])
        await r.backend_up("app-web", a.addr)
        ctx = ssl.create_default_context(cafile=str(tls / "ca.pem"))
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        _, writer = await asyncio.open_connection("127.0.0.1", HTTPS_PORT, ssl=ctx, server_hostname="app.encom.test")
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        writer.close()
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(tls / "ca.pem"))) as c:
            response = await c.get(
                f"https://127.0.0.1:{HTTPS_PORT}/",
                headers={"Host": "app.encom.test"},
                extensions={"sni_hostname": "app.encom.test"},
            )
        assert response.status_code == 200
        assert response.json()["headers"]["x-forwarded-proto"] == "https"
    finally:
        await within(r.close(), "haproxy to stop")


# ---------------------------------------------------------------- the role, with the real controller and discoverd


async def test_role_follows_controller_routes_and_discoverd_backends(tmp_path: Path, backends: MakeBackends) -> None:
    from encom.api.client import ca_context
    from encom.api.types import InstanceRegistration, RouteCreate
    from encom.bootstrap.tls import ensure_tls
    from encom.controller import service as controller_service
    from encom.controller.client import ControllerClient
    from encom.discoverd import service as discoverd_service
    from encom.discoverd.client import DiscoverdClient
    from encom.router import service as router_service

    controller_port, discoverd_port = free_ports(*ROLE_PORTS, 2)
    ports = Ports(
        controller=controller_port,
        discoverd=discoverd_port,
        router_http=HTTP_PORT,
        router_https=HTTPS_PORT,
    )
    settings = Settings(data_dir=tmp_path, ports=ports)
    ensure_tls(settings)
    one, two = await backends(2)
    ca = ssl.create_default_context(cafile=str(settings.ca_cert_path))
    async with (
        running_role(discoverd_service.run, settings, "discoverd"),
        running_role(controller_service.run, settings, "controller"),
        ControllerClient(settings.controller_url, settings.cluster_key, verify=ca_context(settings.ca_cert_path)) as cc,
        DiscoverdClient(settings.discoverd_url, settings.internal_secret) as dc,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{HTTP_PORT}", timeout=5.0) as client,
        httpx.AsyncClient(base_url=f"https://127.0.0.1:{HTTPS_PORT}", timeout=5.0, verify=ca) as tls_client,
    ):
        app = await cc.create_app("early")  # routed before the router starts: the full sync picks it up
        await dc.register("early-web", "one", InstanceRegistration(addr=one.addr))
        async with running_role(router_service.run, settings, "router"):
            host = f"early.{settings.domain}"

            async def reaches(ports: set[int]) -> bool:
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    seen = {(await get(client, host)).json()["port"] for _ in range(20)}
                    return seen == ports
                return False

            await eventually(lambda: reaches({one.port}), "the synced route to reach the registered backend")
            await dc.register("early-web", "two", InstanceRegistration(addr=two.addr))
            await eventually(lambda: reaches({one.port, two.port}), "a discoverd up to add a server")
            await dc.deregister("early-web", "one")
            await eventually(lambda: reaches({two.port}), "a discoverd down to remove a server")

            response = await tls_client.get("/", headers={"Host": host}, extensions={"sni_hostname": host})
            assert response.json()["port"] == two.port, "HTTPS with the cluster's wildcard certificate"

            await cc.create_route(app.name, RouteCreate(domain="www.example.test"))

            async def custom_domain_routed() -> bool:
                return (await get(client, "www.example.test")).status_code == 200

            await eventually(custom_domain_routed, "a route event to add a domain")

            await cc.create_app("late")
            await dc.register("late-web", "three", InstanceRegistration(addr=one.addr))

            async def late_routed() -> bool:
                response = await get(client, f"late.{settings.domain}")
                return response.status_code == 200 and response.json()["port"] == one.port

            await eventually(late_routed, "a new app's route and backend after a reload")

            await cc.delete_app(app.name)

            async def gone() -> bool:
                codes = {(await get(client, h)).status_code for h in (host, "www.example.test")}
                return codes == {404}

            await eventually(gone, "deleting the app to remove its routes")
