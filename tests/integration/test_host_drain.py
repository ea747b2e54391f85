"""Stopping a web job under load through the router drops no request: the host deregisters it, waits until the
router has stopped sending it requests and the ones in flight are answered, and only then sends SIGTERM.

Real roles (discoverd, controller, router with HAProxy, host with runc) on ports 9000-9999 (`cluster_ports(9000)`:
roles at 90xx, TCP routes 9100-9199, job ports 9500-9599)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from encom.api.client import ca_context
from encom.api.settings import Settings
from encom.api.types import HealthCheck, HostJob, HostJobSpec
from encom.bootstrap.daemon import become_subreaper
from encom.bootstrap.tls import ensure_tls
from encom.controller import service as controller_service
from encom.controller.client import ControllerClient
from encom.discoverd import service as discoverd_service
from encom.host import runner
from encom.host import service as host_service
from encom.host.client import HostClient
from encom.router import service as router_service
from encom.router.router import DYNAMIC_SERVER_IDS
from encom.router.runtime import RuntimeAPI
from tests.integration import roles
from tests.integration.roles import cluster_ports, running_role

pytestmark = [
    pytest.mark.integration,
]

PORTS = cluster_ports(9000)
APP = "drainapp"
WAIT = 15.0
REQUEST_SECONDS = 0.8  # each request is in flight this long in the job (longer than the settle: the drain waits)
within = partial(roles.within, seconds=WAIT)
eventually = partial(roles.eventually, seconds=WAIT, poll=0.05)

# A threaded HTTP/1.1 (keep-alive) server answering its port: the headers and the first byte at once, the rest
# REQUEST_SECONDS later. A request cut short is a truncated response, which HAProxy cannot retry on another server
# (it does retry a request that got no response at all: `retry-on empty-response`). ON_TERM=report: on SIGTERM it
# prints how many requests were in flight and exits at once (status 0); ON_TERM=die: Python's default, killed by
# SIGTERM at once (status 143).
SERVER = """\
import http.server, os, signal, sys, threading, time
port = int(os.environ["PORT"])
delay = float(os.environ["DELAY"])
inflight = 0
lock = threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        global inflight
        with lock:
            inflight += 1
        try:
            body = str(port).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:1])
            self.wfile.flush()
            time.sleep(delay)
            self.wfile.write(body[1:])
            self.wfile.flush()
        finally:
            with lock:
                inflight -= 1

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

server = Server(("127.0.0.1", port), Handler)
if os.environ["ON_TERM"] == "report":
    def on_term(signum, frame):
        print(f"SIGTERM inflight={inflight}", flush=True)
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
print("serving", flush=True)
server.serve_forever()
"""


@dataclass
class Cluster:
    settings: Settings
    host: HostClient
    http: httpx.AsyncClient
    controller: ControllerClient

    async def reload_router(self, backend: str) -> None:
        """Make the router reload (a new app's backend): `backend`'s servers then come from the config file, where
        HAProxy keeps idle connections to them (runtime-added servers get none in 2.6)."""
        await self.controller.create_app(f"other-{uuid.uuid4().hex[:8]}")
        rt = RuntimeAPI(self.settings.dir("router") / "haproxy.sock")

        async def from_config() -> bool:
            out = await rt.command(f"show servers state {backend}")
            ids = [int(cols[2]) for cols in map(str.split, out.splitlines()) if len(cols) > 3 and cols[1] == backend]
            return bool(ids) and max(ids) < DYNAMIC_SERVER_IDS

        await eventually(from_config, f"a router reload to put {backend}'s servers in its config file")

    @property
    def app_host(self) -> str:
        return f"{APP}.{self.settings.domain}"

    async def get(self) -> httpx.Response:
        return await self.http.get("/", headers={"Host": self.app_host})

    async def start_web(self, on_term: str) -> HostJob:
        job = await self.host.add_job(web_spec(on_term))
        return await self.wait_job(job.id, "up")

    async def wait_job(self, job_id: str, *states: str) -> HostJob:
        async def reached() -> HostJob | None:
            job = await self.host.get_job(job_id)
            if job.state in states:
                return job
            if job.state in ("down", "crashed", "failed"):
                pytest.fail(f"job {job_id} ended ({job.state}: {job.error}) instead of reaching {'/'.join(states)}")
            return None

        return await eventually(reached, f"job {job_id} to reach {'/'.join(states)}")

    async def routed_ports(self, ports: set[int]) -> None:
        """Until requests through the router reach exactly `ports`."""

        async def reaches() -> bool:
            seen = set()
            for _ in range(3 * len(ports) + 3):
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    response = await self.get()
                    if response.status_code == 200:
                        seen.add(int(response.text))
            return seen == ports

        await eventually(reaches, f"the router to send requests to exactly the jobs on ports {sorted(ports)}")

    async def app_lines(self, job_id: str) -> list[str]:
        return [line.msg async for line in self.host.job_log(job_id, lines=1000) if line.source == "app"]

    async def encom_lines(self, job_id: str) -> list[str]:
        return [line.msg async for line in self.host.job_log(job_id, lines=1000) if line.source == "encom"]

    async def stop(self, job: HostJob) -> tuple[HostJob, float]:
        started = time.monotonic()
        stopped = await within(self.host.stop_job(job.id), f"stopping job {job.id}")
        return stopped, time.monotonic() - started


def web_spec(on_term: str, **changes: Any) -> HostJobSpec:
    base: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "app_id": "app-drain",
        "app_name": APP,
        "release_id": "rel-1",
        "process_type": "web",
        "dyno": "web.1",
        "cmd": 'exec python3 -c "$SERVER_PY"',
        "env": {"SERVER_PY": SERVER, "DELAY": str(REQUEST_SECONDS), "ON_TERM": on_term},
        "port": True,
        "service": f"{APP}-web",
        "check": HealthCheck(start_timeout=10),
        "stop_grace": 5.0,
    }
    return HostJobSpec.model_validate(base | changes)


class Load:
    """`workers` clients sending requests through the router back to back, each on its own keep-alive connection."""

    def __init__(self, cluster: Cluster, workers: int = 8) -> None:
        self.cluster = cluster
        self.results: list[int | str] = []
        self.ports: Counter[int] = Counter()
        self.stopping = asyncio.Event()
        self.tasks = [asyncio.create_task(self._work()) for _ in range(workers)]

    async def _work(self) -> None:
        async with httpx.AsyncClient(base_url=self.cluster.http.base_url, timeout=10.0) as client:
            while not self.stopping.is_set():
                try:
                    response = await client.get("/", headers={"Host": self.cluster.app_host})
                    if response.status_code == 200:
                        self.results.append(200)
                        self.ports[int(response.text)] += 1
                    else:
                        self.results.append(f"{response.status_code}: {response.text.strip()}")
                except httpx.HTTPError as exc:
                    self.results.append(repr(exc))

    async def wait_for(self, n: int) -> None:
        async def enough() -> bool:
            return len(self.results) >= n

        await eventually(enough, f"{n} requests through the router")

    async def stop(self) -> list[int | str]:
        self.stopping.set()
        await within(asyncio.gather(*self.tasks), "the load to stop")
        return self.results


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    become_subreaper()
    settings = Settings(data_dir=tmp_path, ports=PORTS)
    ensure_tls(settings)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running_role(discoverd_service.run, settings, "discoverd"))
        await stack.enter_async_context(running_role(controller_service.run, settings, "controller"))
        controller = await stack.enter_async_context(
            ControllerClient(settings.controller_url, settings.cluster_key, verify=ca_context(settings.ca_cert_path))
        )
        await controller.create_app(APP)  # its default route: <app>.<domain> -> service <app>-web
        await stack.enter_async_context(running_role(router_service.run, settings, "router"))
        await stack.enter_async_context(running_role(host_service.run, settings, "host", stop_timeout=30))
        host = await stack.enter_async_context(HostClient(settings.host_url, settings.internal_secret))
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORTS.router_http}", timeout=10.0)
        )
        yield Cluster(settings, host, http, controller)


def failures(results: list[int | str]) -> list[int | str]:
    return [r for r in results if r != 200]


@pytest.mark.parametrize("on_term", ["report", "die"])
async def test_stopping_a_web_job_under_load_fails_no_request(cluster: Cluster, on_term: str) -> None:
    one = await cluster.start_web(on_term)
    two = await cluster.start_web(on_term)
    assert one.port is not None and two.port is not None
    await cluster.routed_ports({one.port, two.port})
    await cluster.reload_router(f"h_{APP}-web")

    load = Load(cluster)
    await load.wait_for(40)
    assert load.ports[one.port] > 0, f"the job to stop served no request: {load.ports}"
    stopped, elapsed = await cluster.stop(one)
    print(f"stop latency under load ({on_term}): {elapsed * 1000:.0f} ms")
    served_before = load.ports[one.port]
    await load.wait_for(len(load.results) + 30)  # the survivor alone, for a while
    results = await load.stop()

    assert failures(results) == [], (
        f"{len(failures(results))} of {len(results)} requests failed: {Counter(map(str, failures(results)))}"
    )
    assert load.ports[one.port] == served_before, "the stopped job got requests after it was stopped"
    assert stopped.state == "down", stopped
    assert stopped.exit_status == (0 if on_term == "report" else 143), f"not ended by SIGTERM: {stopped}"
    assert elapsed < REQUEST_SECONDS + runner.DEREGISTER_SETTLE + 5.0, f"the drain took {elapsed:.2f}s"
    if on_term == "report":
        assert "SIGTERM inflight=0" in await cluster.app_lines(one.id), "SIGTERM came with requests in flight"
    assert f"Draining connections to port {one.port}" in await cluster.encom_lines(one.id)
    assert not any("not drained" in line for line in await cluster.encom_lines(one.id))

    # The survivor, with no request in flight (its keep-alive connections from HAProxy idle): settle, then SIGTERM.
    stopped, elapsed = await cluster.stop(two)
    print(f"stop latency idle ({on_term}): {elapsed * 1000:.0f} ms")
    assert stopped.state == "down" and stopped.exit_status == (0 if on_term == "report" else 143), stopped
    assert elapsed < runner.CONNECTION_DRAIN_TIMEOUT / 2, f"an idle job took {elapsed:.2f}s to stop: held by the drain"


async def test_a_job_without_a_registration_stops_without_draining(cluster: Cluster) -> None:
    worker = await cluster.host.add_job(
        web_spec(
            "die", process_type="worker", dyno="worker.1", cmd="exec sleep 600", port=False, service=None, check=None
        )
    )
    await cluster.wait_job(worker.id, "up")
    stopped, elapsed = await cluster.stop(worker)
    print(f"stop latency, worker (no port): {elapsed * 1000:.0f} ms")
    assert stopped.state == "down" and stopped.exit_status == 143, stopped
    assert not any("Draining" in line for line in await cluster.encom_lines(worker.id)), "a worker was drained"


async def test_the_drain_is_bounded(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "CONNECTION_DRAIN_TIMEOUT", 1.0)
    job = await cluster.start_web("report")
    assert job.port is not None
    with socket.create_connection(("127.0.0.1", job.port)):  # a client of its own, never finishing
        stopped, elapsed = await cluster.stop(job)
    print(f"stop latency with a connection that never ends (drain timeout 1 s): {elapsed * 1000:.0f} ms")
    assert stopped.state == "down" and stopped.exit_status == 0, stopped
    assert 1.0 <= elapsed < 5.0, f"stopping took {elapsed:.2f}s, not bounded by the 1 s drain timeout"
    assert "Connections not drained within 1s (1 left)" in await cluster.encom_lines(job.id)
