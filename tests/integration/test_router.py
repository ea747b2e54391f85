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
from encom.api.types import Route, RouterLogEntry
from encom.router.access import AccessLog
from encom.router.config import Options
from encom.router.haproxy import ConfigError, HAProxyError
from encom.router.router import Router
from tests.integration.roles import eventually, free_port, free_ports, running_role, within

pytestmark = [
    pytest.mark.integration,
]

HTTP_PORT = 24080
HTTPS_PORT = 24443
PORTS = (24100, 24999)  # backends and TCP routes
ROLE_PORTS = (24000, 24099)  # role APIs of the wiring test


# ---------------------------------------------------------------- helpers


_created = datetime(2026, 1, 1, tzinfo=UTC)


def http_route(domain: str, service: str, path: str = "/", app_id: str = "app", **kw: object) -> Route:
    global _created
    _created += timedelta(seconds=1)
    rid = f"{domain}{path}".replace("/", "_").replace("*", "star")
    return Route(
        id=rid, app_id=app_id, type="http", domain=domain, path=path, service=service,
        created_at=_created, updated_at=_created, **kw,  # type: ignore[arg-type]
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


async def test_first_path_and_wildcard_routes_bring_their_lookups(
    router: Router, client: httpx.AsyncClient, backends: MakeBackends
) -> None:
    # Without path or wildcard routes the config has no lookup for them (a cost on every request): the first
    # one of each kind reloads with it. (After a reload, a connection kept alive from before gets one last
    # answer from the old worker: hence a request before each check.)
    root, api, wild = await backends(3)
    await router.set_routes([http_route("p.test", "root-web")])
    await router.backend_up("root-web", root.addr)
    await router.backend_up("api-web", api.addr)
    await router.backend_up("w-web", wild.addr)
    assert "map_beg" not in router.options.config_path.read_text()
    assert (await get(client, "p.test", "/api/x")).json()["port"] == root.port
    api_route = http_route("p.test", "api-web", "/api")
    await router.add_route(api_route)
    await router.backend_up("api-web", api.addr)
    await get(client, "p.test", "/")
    assert (await get(client, "p.test", "/api/x")).json()["port"] == api.port
    await router.add_route(http_route("*.w.test", "w-web"))
    await router.backend_up("w-web", wild.addr)
    await get(client, "p.test", "/")
    assert (await get(client, "deep.x.w.test")).json()["port"] == wild.port
    assert "map_beg" in router.options.config_path.read_text()
    await router.remove_route(api_route.id)
    await get(client, "p.test", "/")
    assert (await get(client, "p.test", "/api/x")).json()["port"] == root.port


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


async def session_limits(router: Router, backend: str) -> dict[str, str]:
    """Server name -> its session limit (`slim`) as HAProxy's `show stat` reports it."""
    lines = (await router.haproxy.runtime.command("show stat")).splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line.startswith(backend + ",")]
    return {row["svname"]: row["slim"] for row in rows if row["svname"] not in ("FRONTEND", "BACKEND")}


async def test_servers_from_the_config_and_the_runtime_api_get_a_maxconn(
    router: Router, backends: MakeBackends
) -> None:
    a, b = await backends(2)
    await router.set_routes([http_route("limited.test", "limited-web")])
    await router.backend_up("limited-web", a.addr)  # a new backend: a reload, the server in the config file
    await router.add_route(http_route("limited2.test", "other-web"))
    await router.backend_up("limited-web", b.addr)  # an existing backend: `add server` through the Runtime API
    limits = await session_limits(router, "h_limited-web")
    assert limits == {"s_127.0.0.1_" + str(a.port): "100", "s_127.0.0.1_" + str(b.port): "100"}


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


class AccessLines:
    """encom's access-line reader on a router's FIFO, every line kept by path."""

    def __init__(self, opts: Options) -> None:
        self.paths: list[str] = []

        async def locate(server: str) -> tuple[str, str]:
            return "job", "http://host"

        async def deliver(url: str, job_id: str, entries: list[RouterLogEntry]) -> None:
            self.paths.extend(e.msg.split('path="', 1)[1].split('"', 1)[0] for e in entries)

        self.task = asyncio.create_task(AccessLog(locate, deliver).run(opts.access_pipe))

    async def wait_for(self, *paths: str) -> None:
        async def seen() -> bool:
            return set(paths) <= set(self.paths)

        await eventually(seen, f"access lines of {paths}")

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def test_access_lines_written_while_encomd_is_down_are_read_after_adoption(
    tmp_path: Path, client: httpx.AsyncClient, backends: MakeBackends
) -> None:
    (tmp_path / "router").mkdir()
    (a,) = await backends(1)
    opts = options(tmp_path, access_log=True)
    first, second = Router(opts), Router(opts)
    lines = AccessLines(opts)
    await within(first.start(), "haproxy to start")
    try:
        await first.set_routes([http_route("logged.test", "logged-web")])
        await first.backend_up("logged-web", a.addr)
        assert (await get(client, "logged.test", "/before")).status_code == 200
        await lines.wait_for("/before")
        await lines.stop()
        await within(first.close(detach=True), "the router to let go")

        assert (await get(client, "logged.test", "/while-down")).status_code == 200  # nobody reads the FIFO
        await within(second.start(), "the router to adopt haproxy")
        assert second.haproxy.adopted
        lines = AccessLines(opts)
        assert (await get(client, "logged.test", "/after")).status_code == 200
        await lines.wait_for("/while-down", "/after")
        assert lines.paths.count("/while-down") == 1
    finally:
        await lines.stop()
        await within(second.close() if second.haproxy.pid else first.close(), "haproxy to stop")


async def test_a_haproxy_without_the_access_fifo_is_replaced_not_adopted(
    tmp_path: Path, client: httpx.AsyncClient, backends: MakeBackends
) -> None:
    """A HAProxy started without access lines (as an older encom did) would send them to its log file."""
    (tmp_path / "router").mkdir()
    (a,) = await backends(1)
    first = Router(options(tmp_path))
    await within(first.start(), "haproxy to start")
    old = first.haproxy.pid
    await within(first.close(detach=True), "the router to let go")
    second = Router(options(tmp_path, access_log=True))
    lines = AccessLines(second.options)
    try:
        await within(second.start(), "the router to replace haproxy")
        assert not second.haproxy.adopted and second.haproxy.pid != old
        assert old is not None and not process_alive(old)
        await second.set_routes([http_route("logged.test", "logged-web")])
        await second.backend_up("logged-web", a.addr)
        assert (await get(client, "logged.test", "/fresh")).status_code == 200
        await lines.wait_for("/fresh")
    finally:
        await lines.stop()
        await within(second.close(), "haproxy to stop")


def cluster_cert(tmp_path: Path) -> Path:
    """A CA and the cluster wildcard `*.encom.test` issued by it, chain and key in one file (as HAProxy wants)."""
    from encom.bootstrap.tls import create_ca, issue_cert

    tls = tmp_path / "tls"
    tls.mkdir()
    create_ca(tls / "ca.pem", tls / "ca-key.pem")
    issue_cert(tls / "ca.pem", tls / "ca-key.pem", ["encom.test", "*.encom.test"], tls / "c.pem", tls / "k.pem")
    combined = tls / "combined.pem"
    combined.write_text((tls / "c.pem").read_text() + (tls / "k.pem").read_text())
    return combined


async def test_https_with_sni_and_alpn(tmp_path: Path, backends: MakeBackends) -> None:
    combined = cluster_cert(tmp_path)
    (tmp_path / "router").mkdir()
    r = Router(options(tmp_path, https_port=HTTPS_PORT, cert_pem=combined))
    (a,) = await backends(1)
    await within(r.start(), "haproxy to start")
    try:
        await r.set_routes([http_route("app.encom.test", "app-web")])
        await r.backend_up("app-web", a.addr)
        ctx = ssl.create_default_context(cafile=str(combined.parent / "ca.pem"))
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        _, writer = await asyncio.open_connection("127.0.0.1", HTTPS_PORT, ssl=ctx, server_hostname="app.encom.test")
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        writer.close()
        async with httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(combined.parent / "ca.pem"))) as c:
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

            from tests.unit.test_routes_tls import tls_pair

            cert, key = tls_pair("shop.example.test")
            await cc.create_route(app.name, RouteCreate(domain="shop.example.test", certificate=cert, key=key))

            async def own_cert_served() -> bool:  # the event carries no key: the router reads it from the routes
                return (await served_cert("shop.example.test"))[0] == "shop.example.test"

            await eventually(own_cert_served, "a route's own certificate to be served by SNI")

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


# ---------------------------------------------------------------- sticky sessions


def sticky_cookie(response: httpx.Response) -> str | None:
    """The value of the `encom_sticky` cookie the response sets, if any."""
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name.strip() == "encom_sticky":
            return rest.split(";", 1)[0]
    return None


async def test_sticky_route_pins_a_client_and_moves_it_when_its_server_goes(
    router: Router, backends: MakeBackends
) -> None:
    a, b = await backends(2)
    plain = (await backends(1))[0]
    await router.set_routes([http_route("sticky.test", "sticky-web", sticky=True), http_route("plain.test", "p-web")])
    await router.set_backends("sticky-web", [a.addr, b.addr])  # runtime-added servers
    await router.backend_up("p-web", plain.addr)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{HTTP_PORT}", timeout=5.0) as jar:
        first = await get(jar, "sticky.test")
        pinned = first.json()["port"]
        cookie = sticky_cookie(first)
        assert cookie, first.headers
        assert "httponly" in first.headers["set-cookie"].lower()
        for _ in range(20):
            response = await get(jar, "sticky.test")
            assert response.json()["port"] == pinned
            assert sticky_cookie(response) is None, "a valid cookie is not set again"
        assert "encom_sticky" not in response.json()["headers"].get("cookie", ""), "the cookie stays with HAProxy"

        # without a cookie, clients spread over both servers, each with its own stable cookie
        cookies: dict[int, str] = {}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{HTTP_PORT}", timeout=5.0) as fresh:
            for _ in range(40):
                fresh.cookies.clear()
                response = await get(fresh, "sticky.test")
                value = sticky_cookie(response)
                assert value is not None
                assert cookies.setdefault(response.json()["port"], value) == value
        assert set(cookies) == {a.port, b.port} and cookies[pinned] == cookie

        # the pinned server leaves: the next request goes to the other one, which pins the client anew
        other = b if pinned == a.port else a
        await router.set_backends("sticky-web", [other.addr])
        moved = await get(jar, "sticky.test")
        assert moved.json()["port"] == other.port
        assert sticky_cookie(moved) == cookies[other.port]
        for _ in range(5):
            response = await get(jar, "sticky.test")
            assert response.json()["port"] == other.port and sticky_cookie(response) is None

        # a server that comes back at runtime gets its old cookie back (same address, same cookie)
        gone = a if other is b else b
        await router.backend_up("sticky-web", gone.addr)
        response = await jar.get("/", headers={"Host": "sticky.test", "Cookie": f"encom_sticky={cookies[gone.port]}"})
        assert response.json()["port"] == gone.port and sticky_cookie(response) is None

        # non-sticky routes set no cookie
        for _ in range(5):
            assert "set-cookie" not in (await get(jar, "plain.test")).headers

    # a reload renders the runtime-added servers into the config file: their cookies must not change
    reloads = router.reloads
    await router.add_route(http_route("other.test", "other-web"))
    assert router.reloads == reloads + 1
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{HTTP_PORT}", timeout=5.0) as fresh:
        for port, value in cookies.items():
            response = await fresh.get("/", headers={"Host": "sticky.test", "Cookie": f"encom_sticky={value}"})
            assert response.json()["port"] == port and sticky_cookie(response) is None


async def test_sticky_client_of_a_dead_server_is_redispatched(router: Router, backends: MakeBackends) -> None:
    live, dying = await backends(2)
    await router.set_routes([http_route("sd.test", "sd-web", sticky=True)])
    await router.set_backends("sd-web", [live.addr, dying.addr])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{HTTP_PORT}", timeout=5.0) as fresh:
        for _ in range(40):
            fresh.cookies.clear()
            response = await get(fresh, "sd.test")
            if response.json()["port"] == dying.port:
                break
        else:
            pytest.fail("40 new clients never reached the second server")
        await dying.stop()  # still registered: connections to it are refused
        response = await get(fresh, "sd.test")
        assert response.status_code == 200 and response.json()["port"] == live.port
        assert sticky_cookie(response) is not None, "the client is pinned to the live server"
        assert (await get(fresh, "sd.test")).json()["port"] == live.port


# ---------------------------------------------------------------- HTTPS: route certificates by SNI, redirects


def self_signed(name: str) -> tuple[str, str]:
    """A self-signed certificate for `name` (CN and SAN) and its key, PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC) - timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def common_name(der: bytes) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    value = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return value if isinstance(value, str) else value.decode()


async def served_cert(server_name: str) -> tuple[str, str | None]:
    """(CN of the certificate the HTTPS frontend serves for SNI `server_name`, the ALPN protocol chosen)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    _, writer = await within(
        asyncio.open_connection("127.0.0.1", HTTPS_PORT, ssl=ctx, server_hostname=server_name), "a TLS handshake"
    )
    try:
        tls = writer.get_extra_info("ssl_object")
        return common_name(tls.getpeercert(binary_form=True)), tls.selected_alpn_protocol()
    finally:
        writer.close()


@pytest.fixture
async def tls_router(tmp_path: Path) -> AsyncIterator[Router]:
    """A router with an HTTPS frontend whose default certificate is the cluster wildcard `*.encom.test`."""
    combined = cluster_cert(tmp_path)
    (tmp_path / "router").mkdir()
    r = Router(options(tmp_path, https_port=HTTPS_PORT, cert_pem=combined))
    await within(r.start(), "haproxy to start")
    try:
        yield r
    finally:
        await within(r.close(), "haproxy to stop")


@pytest.fixture
async def tls_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{HTTPS_PORT}", timeout=5.0, verify=False) as c:
        yield c


async def test_route_certificates_are_served_by_sni(
    tls_router: Router, tls_client: httpx.AsyncClient, backends: MakeBackends
) -> None:
    one, two, wild = (self_signed(n) for n in ("one.example", "two.example", "*.wild.example"))
    a, b = await backends(2)
    routes = [
        http_route("one.example", "one-web", certificate=one[0], key=one[1]),
        http_route("two.example", "two-web", certificate=two[0], key=two[1]),
        http_route("*.wild.example", "two-web", certificate=wild[0], key=wild[1]),
        http_route("app.encom.test", "one-web"),
    ]
    await tls_router.set_routes(routes)
    await tls_router.backend_up("one-web", a.addr)
    await tls_router.backend_up("two-web", b.addr)

    assert await served_cert("one.example") == ("one.example", "h2")
    assert await served_cert("two.example") == ("two.example", "h2")
    assert await served_cert("deep.wild.example") == ("*.wild.example", "h2")
    assert (await served_cert("unknown.example"))[0] == "encom.test", "the cluster certificate is the default"
    assert (await served_cert("app.encom.test"))[0] == "encom.test"

    response = await tls_client.get("/", headers={"Host": "two.example"}, extensions={"sni_hostname": "two.example"})
    assert response.json()["port"] == b.port and response.json()["headers"]["x-forwarded-proto"] == "https"

    certs = tls_router.options.certs_dir
    files = sorted(certs.glob("*.pem"))
    assert len(files) == 3 and all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    assert certs.stat().st_mode & 0o777 == 0o700

    # a new certificate for a route replaces the old one; a route losing its certificate falls back to the default
    renewed = self_signed("one.example")
    await tls_router.add_route(routes[0].model_copy(update={"certificate": renewed[0], "key": renewed[1]}))
    await tls_router.add_route(routes[1].model_copy(update={"certificate": None, "key": None}))
    assert (await served_cert("two.example"))[0] == "encom.test"
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    _, writer = await asyncio.open_connection("127.0.0.1", HTTPS_PORT, ssl=ctx, server_hostname="one.example")
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    from cryptography import x509

    assert x509.load_der_x509_certificate(der) == x509.load_pem_x509_certificate(renewed[0].encode())
    assert len(list(certs.glob("*.pem"))) == 2, "the certificate file of a route without one is removed"


async def test_a_refused_certificate_is_left_out_and_logged(
    tls_router: Router, tls_client: httpx.AsyncClient, backends: MakeBackends, caplog: pytest.LogCaptureFixture
) -> None:
    good, other = self_signed("good.example"), self_signed("other.example")
    (a,) = await backends(1)
    await tls_router.set_routes([http_route("ok.example", "ok-web")])
    await tls_router.backend_up("ok-web", a.addr)
    worker = await tls_router.haproxy.worker_pid()

    garbage = http_route("garbage.example", "ok-web", certificate="-----BEGIN CERTIFICATE-----\nnope\n", key="nope")
    mismatched = http_route("mismatch.example", "ok-web", certificate=good[0], key=other[1])
    with caplog.at_level("ERROR", logger="encom.router.router"):
        await tls_router.add_route(garbage)
        await tls_router.add_route(mismatched)
    assert set(tls_router.cert_errors) == {garbage.id, mismatched.id}
    assert sum("certificate refused" in r.getMessage() for r in caplog.records) == 2
    assert not any("PRIVATE KEY" in r.getMessage() for r in caplog.records), "keys are never logged"
    assert tls_router.last_error is None, "no reload was attempted with a refused certificate"
    assert await tls_router.haproxy.worker_pid() == worker

    # the routes themselves work, with the default certificate; later changes still apply
    assert (await served_cert("mismatch.example"))[0] == "encom.test"
    response = await tls_client.get("/", headers={"Host": "garbage.example"}, extensions={"sni_hostname": "x"})
    assert response.json()["port"] == a.port
    await tls_router.add_route(http_route("good.example", "ok-web", certificate=good[0], key=good[1]))
    assert (await served_cert("good.example"))[0] == "good.example"
    assert tls_router.last_error is None


async def test_redirect_https_for_plain_http_only(
    tls_router: Router, client: httpx.AsyncClient, tls_client: httpx.AsyncClient, backends: MakeBackends
) -> None:
    (a,) = await backends(1)
    await tls_router.set_routes(
        [
            http_route("secure.test", "r-web", redirect_https=True),
            http_route("*.swild.test", "r-web", redirect_https=True),
            http_route("open.swild.test", "r-web"),
            http_route("plain.test", "r-web"),
        ]
    )
    await tls_router.backend_up("r-web", a.addr)
    worker = await tls_router.haproxy.worker_pid()

    response = await client.get("/some/path?q=1&r=2", headers={"Host": "Secure.Test:80"})
    assert response.status_code == 301
    assert response.headers["location"] == f"https://secure.test:{HTTPS_PORT}/some/path?q=1&r=2"
    assert (await get(client, "x.swild.test", "/w")).headers["location"] == f"https://x.swild.test:{HTTPS_PORT}/w"
    assert (await get(client, "open.swild.test")).status_code == 200, "an exact domain is not caught by a wildcard"
    assert (await get(client, "plain.test")).status_code == 200
    tls = await tls_client.get("/", headers={"Host": "secure.test"}, extensions={"sni_hostname": "secure.test"})
    assert tls.status_code == 200 and tls.json()["port"] == a.port

    # turning it on or off is a map change, not a reload
    await tls_router.add_route(http_route("plain.test", "r-web", redirect_https=True))
    await tls_router.add_route(http_route("secure.test", "r-web"))
    assert (await get(client, "plain.test")).status_code == 301
    assert (await get(client, "secure.test")).status_code == 200
    assert await tls_router.haproxy.worker_pid() == worker


# ---------------------------------------------------------------- websockets and streaming


@contextlib.asynccontextmanager
async def websocket_echo() -> AsyncIterator[str]:
    """A websocket echo server; yields its address."""
    from websockets.asyncio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    port = free_port(*PORTS)
    async with serve(echo, "127.0.0.1", port):
        yield f"127.0.0.1:{port}"


@pytest.mark.parametrize("sticky", [False, True])
async def test_websocket_echo_through_haproxy(router: Router, sticky: bool) -> None:
    from websockets.asyncio.client import connect

    async with websocket_echo() as addr:
        await router.set_routes([http_route("ws.test", "ws-web", sticky=sticky)])
        await router.backend_up("ws-web", addr)
        async with connect("ws://ws.test/chat", host="127.0.0.1", port=HTTP_PORT, proxy=None, open_timeout=5) as ws:
            assert ws.response is not None and ws.response.status_code == 101
            assert ("encom_sticky=" in ws.response.headers.get("Set-Cookie", "")) == sticky
            for text in ("hello", "x" * 100_000):
                await ws.send(text)
                assert await within(ws.recv(), "the websocket echo") == text
            await ws.send(b"\x00\x01binary")
            assert await within(ws.recv(), "the binary echo") == b"\x00\x01binary"


async def test_streamed_response_is_not_buffered(router: Router, client: httpx.AsyncClient) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(b"6\r\nfirst\n\r\n")
            await writer.drain()
            await asyncio.sleep(1.0)
            writer.write(b"5\r\nrest\n\r\n0\r\n\r\n")
            await writer.drain()
        writer.close()

    port = free_port(*PORTS)
    server = await asyncio.start_server(slow, "127.0.0.1", port)
    try:
        await router.set_routes([http_route("stream.test", "stream-web")])
        await router.backend_up("stream-web", f"127.0.0.1:{port}")
        loop = asyncio.get_running_loop()
        start = loop.time()
        received: list[tuple[float, bytes]] = []
        async with client.stream("GET", "/", headers={"Host": "stream.test"}) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                received.append((loop.time() - start, chunk))
        assert b"".join(c for _, c in received) == b"first\nrest\n"
        first_at, first = received[0]
        # The backend waits 1 s between its two chunks: unbuffered, the first arrives that much earlier.
        assert first == b"first\n" and received[-1][0] - first_at >= 0.5, received
    finally:
        server.close()
        await within(server.wait_closed(), "the streaming server to close")


async def test_certificate_changes_reload_without_dropping_requests(
    tls_router: Router, tls_client: httpx.AsyncClient, backends: MakeBackends
) -> None:
    (a,) = await backends(1)
    await tls_router.set_routes([http_route("busy.encom.test", "busy-web")])
    await tls_router.backend_up("busy-web", a.addr)
    load = Load(tls_client, "busy.encom.test")
    await load.wait_for(50)
    for i in range(3):
        cert, key = self_signed(f"c{i}.example")
        await tls_router.add_route(http_route(f"c{i}.example", "busy-web", certificate=cert, key=key))
        await load.wait_for(50 + 50 * (i + 1))
    results = await load.stop()
    assert Counter(results) == {200: len(results)}, Counter(results)
    assert (await served_cert("c2.example"))[0] == "c2.example"
