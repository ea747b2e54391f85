"""Router access lines into the logs of the jobs that served the requests.

HAProxy writes one raw line per HTTP request to its stdout, which is a FIFO under the router dir (`log stdout
format raw` and ACCESS_LOG_FORMAT in the HTTP frontends). Every READ_SECONDS encom reads what the FIFO holds in
a few large reads: one receive per request, as a datagram socket needs, cost a quarter of the router's
throughput on 2 cores (bench/router.py). Each line names the server (`ip:port`); the discoverd watches tell
which job that is and on which host, and the lines go to that host in batches (`POST
/host/jobs/{id}/router-log`), where they join the job's log as `router[web.1]: …` lines.

Access lines never hold up the router or the app: HAProxy's writes do not block (a full FIFO drops lines),
lines beyond MAX_PENDING a flush are dropped unparsed, and so are lines of requests no job served (404, 503) and
lines that cannot be delivered. HAProxy holds the FIFO open read-write, so it outlives encomd's reader: after a
restart the reader takes up the lines written meanwhile (as many as the FIFO held).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import stat
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

from encom.api.errors import ApiError
from encom.api.types import Instance, RouterLogEntry, utcnow
from encom.discoverd.client import HOST_SERVICE, DiscoverdClient
from encom.host.client import HostClient

log = logging.getLogger(__name__)

# server, method, status, total time (ms), bytes to the client, request id (a capture), URI (last: HAProxy cuts
# a line at ACCESS_LINE_MAX, and then only the URI's end is lost).
ACCESS_LOG_FORMAT = "%si:%sp %HM %ST %Ta %B %[capture.req.hdr(0)] %{+Q}HU"
ACCESS_LINE_MAX = 4000  # HAProxy's `len`: a pipe write up to PIPE_BUF (4096) is atomic, so threads' lines never mix
READ_SECONDS = 0.1
FLUSH_SECONDS = 0.5
# Lines parsed and delivered a flush; the rest are dropped unparsed. A line costs about 10 µs of CPU on its way into
# a job's log (parsed, encoded, decoded and re-encoded by the host as a log line; more for the HTTP call, the write
# and every follower and drain): the cap keeps a flood of requests from spending more than a fraction of a core on
# logs that, at 10,000 lines a second, hold only the last second anyway.
MAX_PENDING = 5_000
DROP_REPORT_SECONDS = 60.0
READ_MAX = 8 << 20  # bytes read a step at most (HAProxy drops what the FIFO cannot hold meanwhile)
PIPE_BYTES = 1 << 20  # the FIFO's buffer (the default 64 KB is ~600 lines, 20 ms at full speed)


class Access(NamedTuple):  # (a tuple: one is made for every request)
    server: str  # "ip:port"
    entry: RouterLogEntry


def parse(line: str) -> Access | None:
    """An access line as ACCESS_LOG_FORMAT writes it, as a Heroku-style router log entry; None for lines
    without a server (the request was answered by HAProxy itself) or that do not parse."""
    try:
        server, method, status, duration, size, request_id, quoted = line.rstrip("\n").split(" ", 6)
    except ValueError:
        return None
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit() or port == "0" or host == "-" or not quoted.startswith('"'):
        return None
    path = quoted[1:].removesuffix('"')
    msg = f'method={method} path="{path}" status={status} service={duration}ms bytes={size} request_id={request_id}'
    return Access(server, RouterLogEntry(timestamp=utcnow(), msg=msg[:10_000]))


def make_fifo(path: Path) -> None:
    """`path` as a FIFO only we can open (whatever was there before is replaced)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISFIFO(path.lstat().st_mode):
            return
        path.unlink()
    with contextlib.suppress(FileExistsError):
        os.mkfifo(path, 0o600)


def open_fifo_for_haproxy(path: Path) -> int:
    """The descriptor HAProxy gets as its stdout: read-write, so a write never fails for want of a reader,
    and with a buffer of PIPE_BYTES. The caller closes it once HAProxy has it."""
    make_fifo(path)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    with contextlib.suppress(OSError):  # EPERM above /proc/sys/fs/pipe-max-size unless privileged
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    return fd


def is_fifo_of(pid: int, fd: int, path: Path) -> bool:
    """Whether process `pid`'s descriptor `fd` is the FIFO at `path`."""
    try:
        theirs, ours = os.stat(f"/proc/{pid}/fd/{fd}"), path.stat()
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


Locate = Callable[[str], Awaitable[tuple[str, str] | None]]  # server -> (job id, host URL)
Deliver = Callable[[str, str, list[RouterLogEntry]], Awaitable[None]]  # host URL, job id, lines


class AccessLog:
    """Reads HAProxy's access lines from the FIFO every READ_SECONDS and delivers them per job every
    FLUSH_SECONDS. Reading and parsing in small steps keeps each step short: parsing half a second's lines at
    once held a core for tens of milliseconds, which showed in the router's p99 latency (bench/router.py)."""

    def __init__(self, locate: Locate, deliver: Deliver) -> None:
        self.locate = locate
        self.deliver = deliver
        self.partial = b""  # the start of a line whose end is not read yet
        self.batches: dict[str, list[RouterLogEntry]] = defaultdict(list)  # server -> entries, until the flush
        self.kept = 0  # lines in `batches`
        self.dropped = 0  # lines over MAX_PENDING, since the start
        self.reported = (0, float("-inf"))  # `dropped` when it was last logged, and when

    def read(self, fd: int) -> list[str]:
        """The whole lines the FIFO holds (up to READ_MAX bytes of them)."""
        chunks, size = [self.partial], 0
        while size < READ_MAX:
            try:
                data = os.read(fd, PIPE_BYTES)
            except BlockingIOError:
                break
            if not data:  # no writer: HAProxy is not running
                break
            chunks.append(data)
            size += len(data)
        data = b"".join(chunks)
        end = data.rfind(b"\n") + 1
        self.partial = data[end:] if len(data) - end <= ACCESS_LINE_MAX else b""  # else not a line HAProxy wrote
        return data[:end].decode(errors="replace").split("\n")[:-1]

    def keep(self, lines: list[str]) -> None:
        """Parse `lines` for the next flush (up to MAX_PENDING lines a flush)."""
        room = max(0, MAX_PENDING - self.kept)
        self.dropped += max(0, len(lines) - room)
        for line in lines[:room]:
            found = parse(line)
            if found is not None:
                self.batches[found.server].append(found.entry)
                self.kept += 1

    def report_dropped(self) -> None:
        """A warning at most every DROP_REPORT_SECONDS while lines are being dropped."""
        count, at = self.reported
        now = time.monotonic()
        if self.dropped > count and now - at >= DROP_REPORT_SECONDS:
            rate = MAX_PENDING / FLUSH_SECONDS
            log.warning("%d router access lines dropped (over %.0f a second)", self.dropped - count, rate)
            self.reported = (self.dropped, now)

    async def flush(self) -> None:
        batches, self.batches, self.kept = self.batches, defaultdict(list), 0
        for server, entries in batches.items():
            target = await self.locate(server)
            if target is None:
                continue
            job_id, url = target
            try:
                await self.deliver(url, job_id, entries)
            except (ApiError, OSError) as exc:
                log.debug("router lines for job %s not delivered: %s", job_id, exc)

    async def run(self, path: Path) -> None:
        """Read the FIFO at `path` (made if missing) and deliver until cancelled."""
        make_fifo(path)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        next_flush = time.monotonic() + FLUSH_SECONDS
        try:
            while True:
                await asyncio.sleep(READ_SECONDS)
                lines = self.read(fd)  # non-blocking, a few large reads
                if lines:  # (an idle router makes no thread hop)
                    await asyncio.to_thread(self.keep, lines)
                if time.monotonic() >= next_flush:
                    next_flush = time.monotonic() + FLUSH_SECONDS
                    await self.flush()
                    self.report_dropped()
        finally:
            os.close(fd)


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
