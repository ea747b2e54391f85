"""Router access lines into the logs of the jobs that served the requests.

HAProxy sends one raw line per HTTP request to a unix datagram socket (`log <socket> format raw` and
ACCESS_LOG_FORMAT in the HTTP frontends). Each line names the server (`ip:port`); the discoverd watches tell
which job that is and on which host, and the lines go to that host in batches (`POST
/host/jobs/{id}/router-log`), where they join the job's log as `router[web.1]: …` lines. Lines of requests
no job served (404, 503) and lines that cannot be delivered are dropped: access lines never hold up the
router or the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from encom.api.errors import ApiError
from encom.api.types import Instance, RouterLogEntry, utcnow
from encom.discoverd.client import HOST_SERVICE, DiscoverdClient
from encom.host.client import HostClient

log = logging.getLogger(__name__)

# server, method, URI, status, total time (ms), bytes to the client, request id (a capture).
ACCESS_LOG_FORMAT = "%si:%sp %HM %{+Q}HU %ST %Ta %B %[capture.req.hdr(0)]"
FLUSH_SECONDS = 0.5
MAX_PENDING = 10_000  # lines held for delivery; beyond that new ones are dropped
RECV_BYTES = 8192  # HAProxy's `len` for these lines
RECV_TIMEOUT = 0.2  # how often the reading thread looks whether it should stop


@dataclass(frozen=True)
class Access:
    server: str  # "ip:port"
    entry: RouterLogEntry


def parse(line: str) -> Access | None:
    """An access line as ACCESS_LOG_FORMAT writes it, as a Heroku-style router log entry; None for lines
    without a server (the request was answered by HAProxy itself) or that do not parse."""
    try:
        server, method, rest = line.strip().split(" ", 2)
        quoted, _, tail = rest.rpartition('" ')
        path = quoted.removeprefix('"')
        status, duration, size, request_id = tail.split(" ")
    except ValueError:
        return None
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit() or port == "0" or host == "-":
        return None
    msg = f'method={method} path="{path}" status={status} service={duration}ms bytes={size} request_id={request_id}'
    return Access(server, RouterLogEntry(timestamp=utcnow(), msg=msg[:10_000]))


def bind_datagram(path: Path) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    os.chmod(path, 0o600)
    return sock


Locate = Callable[[str], Awaitable[tuple[str, str] | None]]  # server -> (job id, host URL)
Deliver = Callable[[str, str, list[RouterLogEntry]], Awaitable[None]]  # host URL, job id, lines


class AccessLog:
    """Receives HAProxy's access lines and delivers them per job every FLUSH_SECONDS.

    The datagrams are read by a thread of their own, kept raw and parsed at the flush: one per request adds up
    (at tens of thousands of requests a second an event-loop callback each halved the router's throughput in
    bench/router.py and would starve encomd's loop); a blocking recv loop costs a fraction of that."""

    def __init__(self, locate: Locate, deliver: Deliver) -> None:
        self.locate = locate
        self.deliver = deliver
        self.pending: list[bytes] = []
        self.lock = threading.Lock()
        self.stopped = threading.Event()

    def receive(self, sock: socket.socket) -> None:
        """The reading thread: until `stopped`, keep up to MAX_PENDING datagrams for the next flush."""
        sock.settimeout(RECV_TIMEOUT)
        while not self.stopped.is_set():
            try:
                data = sock.recv(RECV_BYTES)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                if len(self.pending) < MAX_PENDING:
                    self.pending.append(data)

    def take(self) -> dict[str, list[RouterLogEntry]]:
        """What came since the last flush, parsed, per server."""
        with self.lock:
            raw, self.pending = self.pending, []
        batches: dict[str, list[RouterLogEntry]] = defaultdict(list)
        for data in raw:
            found = parse(data.decode(errors="replace"))
            if found is not None:
                batches[found.server].append(found.entry)
        return batches

    async def flush(self) -> None:
        for server, entries in self.take().items():
            target = await self.locate(server)
            if target is None:
                continue
            job_id, url = target
            try:
                await self.deliver(url, job_id, entries)
            except (ApiError, OSError) as exc:
                log.debug("router lines for job %s not delivered: %s", job_id, exc)

    async def run(self, path: Path) -> None:
        """Listen on `path` (a unix datagram socket, replaced if it exists) and deliver until cancelled."""
        sock = bind_datagram(path)
        reader = threading.Thread(target=self.receive, args=(sock,), name="router-access-log", daemon=True)
        reader.start()
        try:
            while True:
                await asyncio.sleep(FLUSH_SECONDS)
                await self.flush()
        finally:
            self.stopped.set()
            await asyncio.to_thread(reader.join, RECV_TIMEOUT * 4)
            sock.close()


class JobDirectory:
    """Which job serves at an address (from the routed services' discoverd instances) and the URL of its
    host (from discoverd's host service, re-read when a host is unknown)."""

    def __init__(self, discoverd: DiscoverdClient, secret: str) -> None:
        self.discoverd = discoverd
        self.secret = secret
        self.jobs: dict[str, tuple[str, str]] = {}  # "ip:port" -> (job id, host id)
        self.hosts: dict[str, str] = {}  # host id -> URL
        self.clients: dict[str, HostClient] = {}

    def up(self, instance: Instance) -> None:
        job_id, host_id = instance.meta.get("job_id"), instance.meta.get("host_id")
        if job_id and host_id:
            self.jobs[instance.addr] = (job_id, host_id)

    def down(self, addr: str) -> None:
        self.jobs.pop(addr, None)

    async def locate(self, server: str) -> tuple[str, str] | None:
        found = self.jobs.get(server)
        if found is None:
            return None
        job_id, host_id = found
        if host_id not in self.hosts:
            with contextlib.suppress(ApiError):
                instances = await self.discoverd.instances(HOST_SERVICE)
                self.hosts = {i.meta["id"]: i.meta["url"] for i in instances if i.meta.get("id") and i.meta.get("url")}
        url = self.hosts.get(host_id)
        return (job_id, url) if url else None

    async def deliver(self, url: str, job_id: str, entries: list[RouterLogEntry]) -> None:
        client = self.clients.get(url)
        if client is None:
            client = self.clients[url] = HostClient(url, self.secret)
        await client.add_router_log(job_id, entries)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()
        self.clients.clear()
