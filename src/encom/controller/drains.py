"""Log drains: their records (URL checks, tokens, events) and the Drainer, which ships every app's lines to its
drains from the controller role.

The Drainer keeps one Shipper per drain. A Shipper follows the app's merged live log (the same fan-in as
`GET /apps/{app}/log/stream?follow=true`) into an in-memory buffer, and delivers the buffer through its
transport: RFC 5424 messages, octet-counted (RFC 6587) over TCP or TLS, or batched HTTP POSTs in Heroku's
logplex shape. A drain that is down only fills its own buffer (bounded; the oldest lines go first): nothing
waits on it, and the hosts' own logs are untouched. The time of the last delivered line is saved as the
drain's cursor every few seconds, so a restarted controller resumes after it.

Syslog fields follow Heroku's drains: HOSTNAME = the app's name, APP-NAME = the line's source (`app`,
`router`, `encom`), PROCID = its dyno (`web.1`) as `encom log` shows it in brackets; PRI = user facility
with severity info (stdout) or err (stderr).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol
from urllib.parse import SplitResult, unquote, urlsplit

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from encom.api.aio import wait_for
from encom.api.errors import ApiError, Conflict, NotFound, ValidationError
from encom.api.settings import Settings
from encom.api.types import Drain, DrainCreate, EventType, LogLine
from encom.controller import events, logs
from encom.controller.db import Database
from encom.controller.events import EventHub
from encom.controller.models import AppRow, DrainRow

log = logging.getLogger(__name__)

SCHEMES = ("syslog+tcp", "syslog+tls", "https", "http")
SCHEME_HINT = "use syslog+tcp://, syslog+tls://, https:// or http://"
MAX_BUFFER = 10_000  # lines per drain held while it is down; the oldest go first beyond that
MAX_BATCH = 500  # lines per POST (and per TCP write)
HTTP_LINGER = 1.0  # seconds an HTTP batch waits to fill before it is sent
BACKOFF = (0.5, 10.0)  # reconnect delay: first, doubling up to the last
CONNECT_TIMEOUT = 5.0
WRITE_TIMEOUT = 5.0  # a receiver that takes longer to take a batch counts as down
RESCAN = 1.0  # seconds between reads of the drains table (any controller of the cluster may change it)
SAVE_EVERY = 2.0  # seconds between cursor saves
FOLLOW_RETRY = 1.0  # seconds before a broken log follow is started again
FACILITY_USER = 1
SEVERITY = {"stdout": 6, "stderr": 3}  # info, err
CONTENT_TYPE = "application/logplex-1"


# ---------------------------------------------------------------- URLs


def _scheme(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def redact(url: str) -> str:
    """The URL without its credentials (`https://***@host/path`), for logs and events."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]).geturl()


def where(url: str) -> str:
    """`scheme://host:port` of a drain, for the controller's log: a path or query may hold a secret too."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def check_url(url: str) -> SplitResult:
    """The parsed URL of a drain, or a 400 naming what is wrong (never echoing its credentials)."""
    url = url.strip()
    scheme = _scheme(url)
    if not scheme:
        raise ValidationError(f"invalid drain URL: expected scheme://host:port ({SCHEME_HINT})")
    if scheme not in SCHEMES:
        raise ValidationError(f'unsupported drain URL scheme "{scheme}": {SCHEME_HINT}')
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValidationError(f"drain URL has no host: expected {scheme}://host:port")
    try:
        port = parts.port
    except ValueError:
        raise ValidationError("drain URL has an invalid port: expected a number between 1 and 65535") from None
    if port is None and scheme.startswith("syslog+"):
        raise ValidationError(f"drain URL has no port: expected {scheme}://host:port")
    if port == 0:
        raise ValidationError("drain URL has an invalid port: expected a number between 1 and 65535")
    return parts


# ---------------------------------------------------------------- records


def _wire(row: DrainRow) -> Drain:
    return Drain.model_validate(row, from_attributes=True)


def _record(session: Session, kind: EventType, drain: Drain) -> None:
    events.record(session, kind, drain.id, drain.model_copy(update={"url": redact(drain.url)}), drain.app_id)


def create_drain(session: Session, app: AppRow, body: DrainCreate) -> Drain:
    url = body.url.strip()
    check_url(url)
    taken = session.scalar(select(DrainRow.id).where(DrainRow.app_id == app.id, DrainRow.url == url))
    if taken is not None:
        raise Conflict("drain already exists")
    row = DrainRow(id=str(uuid.uuid4()), app_id=app.id, url=url, token=f"d.{uuid.uuid4()}")
    session.add(row)
    session.flush()
    drain = _wire(row)
    _record(session, "drain", drain)
    return drain


def list_drains(session: Session, app: AppRow) -> list[Drain]:
    rows = session.scalars(select(DrainRow).where(DrainRow.app_id == app.id).order_by(DrainRow.created_at))
    return [_wire(row) for row in rows]


def delete_drain(session: Session, app: AppRow, ref: str) -> Drain:
    """`ref` is the drain's id or its URL as given."""
    query = select(DrainRow).where(DrainRow.app_id == app.id, or_(DrainRow.id == ref, DrainRow.url == ref.strip()))
    row = session.scalars(query).first()
    if row is None:
        raise NotFound(f'drain "{redact(ref)}" not found in app {app.name}')
    return _delete_row(session, row)


def _delete_row(session: Session, row: DrainRow) -> Drain:
    drain = _wire(row)
    session.delete(row)
    _record(session, "drain_deletion", drain)
    return drain


def delete_app_drains(session: Session, app: AppRow) -> int:
    rows = list(session.scalars(select(DrainRow).where(DrainRow.app_id == app.id)))
    for row in rows:
        _delete_row(session, row)
    return len(rows)


# ---------------------------------------------------------------- RFC 5424 and framing


def _field(value: str, limit: int) -> str:
    """A syslog header field: printable US-ASCII without spaces, at most `limit` characters, `-` when empty."""
    cleaned = "".join(ch if 33 <= ord(ch) <= 126 else "_" for ch in value)[:limit]
    return cleaned or "-"


def rfc5424(line: LogLine, app_name: str) -> bytes:
    """`<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID - - MSG` (no MSGID, no structured data, no BOM)."""
    pri = FACILITY_USER * 8 + SEVERITY[line.stream]
    header = (
        f"<{pri}>1 {line.time_text} {_field(app_name, 255)} {_field(line.source, 48)} "
        f"{_field(line.process_name, 128)} - -"
    )
    return f"{header} {line.msg}".encode()


def octet_frame(message: bytes) -> bytes:
    """RFC 6587 octet counting: `<length> <message>`."""
    return b"%d %b" % (len(message), message)


def logplex_body(messages: Iterable[bytes]) -> bytes:
    """An HTTPS drain's body as Heroku's logplex sends it: octet-counted messages, each ending in a newline
    (counted), so the body is also one message per line."""
    return b"".join(octet_frame(message + b"\n") for message in messages)


# ---------------------------------------------------------------- transports


class DeliveryError(Exception):
    """The receiver is down, refuses, or does not keep up."""


class Transport(Protocol):
    max_batch: int
    linger: float  # seconds a batch waits to fill before it is sent

    async def send(self, messages: list[bytes]) -> None: ...

    async def close(self) -> None: ...


@dataclass
class SyslogStream:
    """Octet-counted RFC 5424 over one long-lived TCP (or TLS) connection, reopened after a failure."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    max_batch: int = MAX_BATCH
    linger: float = 0.0
    writer: asyncio.StreamWriter | None = None
    closed: asyncio.Task[None] | None = None  # ends when the receiver closes its side

    async def _connect(self) -> asyncio.StreamWriter:
        if self.writer is not None:
            return self.writer
        server_hostname = self.host if self.tls is not None else None
        opening = asyncio.open_connection(self.host, self.port, ssl=self.tls, server_hostname=server_hostname)
        try:
            reader, writer = await wait_for(opening, CONNECT_TIMEOUT)
        except TimeoutError:
            raise DeliveryError(f"no connection within {CONNECT_TIMEOUT:g}s") from None
        self.writer, self.closed = writer, asyncio.create_task(_until_eof(reader))
        return writer

    async def send(self, messages: list[bytes]) -> None:
        writer = await self._connect()
        if self.closed is not None and self.closed.done():
            raise DeliveryError("the receiver closed the connection")
        writer.write(b"".join(octet_frame(message) for message in messages))
        try:
            await wait_for(writer.drain(), WRITE_TIMEOUT)
        except TimeoutError:
            raise DeliveryError(f"the receiver took no data for {WRITE_TIMEOUT:g}s") from None

    async def close(self) -> None:
        writer, self.writer = self.writer, None
        if self.closed is not None:
            self.closed.cancel()
            self.closed = None
        if writer is not None:
            writer.transport.abort()  # a close() would wait to flush what a stuck receiver never reads


async def _until_eof(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(OSError):
        while await reader.read(4096):
            pass  # a syslog receiver sends nothing; whatever it does send is ignored


class _QuietDrainPosts(logging.Filter):
    """httpx logs every request with its full URL at INFO: a drain's path or query may hold its secret, and
    a busy drain posts every second. Drop those records."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) > 1 and str(args[1]) in self.urls)


_quiet = _QuietDrainPosts()
logging.getLogger("httpx").addFilter(_quiet)


@dataclass
class LogplexPost:
    """Batches POSTed as Heroku's HTTPS drains post them (logplex frames, its headers)."""

    url: str
    token: str
    max_batch: int = MAX_BATCH
    linger: float = HTTP_LINGER
    http: httpx.AsyncClient | None = None
    target: str = ""  # the URL without its credentials (they go as Basic auth)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        self.target = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        _quiet.urls.add(str(httpx.URL(self.target)))

    def _client(self) -> httpx.AsyncClient:
        if self.http is None:
            timeout = httpx.Timeout(WRITE_TIMEOUT, connect=CONNECT_TIMEOUT)
            parts = urlsplit(self.url)
            auth = None
            if parts.username is not None:
                auth = httpx.BasicAuth(unquote(parts.username), unquote(parts.password or ""))
            self.http = httpx.AsyncClient(timeout=timeout, auth=auth, headers={"User-Agent": "encom-drain"})
        return self.http

    async def send(self, messages: list[bytes]) -> None:
        headers = {
            "Content-Type": CONTENT_TYPE,
            "Logplex-Msg-Count": str(len(messages)),
            "Logplex-Drain-Token": self.token,
            "Logplex-Frame-Id": uuid.uuid4().hex,
        }
        try:
            response = await self._client().post(self.target, content=logplex_body(messages), headers=headers)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from None  # httpx's text names no credentials
        if not response.is_success:
            raise DeliveryError(f"HTTP {response.status_code}")

    async def close(self) -> None:
        http, self.http = self.http, None
        if http is not None:
            await http.aclose()


def transport_for(url: str, token: str) -> Transport:
    parts = check_url(url)
    scheme = parts.scheme.lower()
    if scheme in ("https", "http"):
        return LogplexPost(url, token)
    assert parts.hostname is not None and parts.port is not None
    tls = ssl.create_default_context() if scheme == "syslog+tls" else None
    return SyslogStream(parts.hostname, parts.port, tls)


# ---------------------------------------------------------------- shipping


@dataclass(frozen=True)
class DrainTarget:
    id: str
    app_id: str
    app_name: str
    url: str
    token: str
    cursor: datetime  # lines after this time are shipped

    @property
    def label(self) -> str:
        """How logs name the drain: never with its credentials."""
        return f"drain {self.id} ({where(self.url)}) of app {self.app_name}"


@dataclass
class Shipper:
    """One drain: the app's live log into a bounded buffer, the buffer out through the transport."""

    settings: Settings
    target: DrainTarget
    transport: Transport
    buffer: deque[tuple[int, LogLine]] = field(default_factory=deque)  # (sequence number, line)
    seq: int = 0
    more: asyncio.Event = field(default_factory=asyncio.Event)
    cursor: datetime | None = None  # time of the last line delivered
    dropped: int = 0  # lines dropped in this outage
    down: bool = False

    def __post_init__(self) -> None:
        self.cursor = self.target.cursor

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.follow(), name=f"drain-follow-{self.target.id}")
                group.create_task(self.deliver(), name=f"drain-deliver-{self.target.id}")
        finally:
            await self.transport.close()

    async def follow(self) -> None:
        since, failing = self.target.cursor, False
        while True:
            try:
                source = await logs.follow_app_log(
                    self.settings, self.target.app_id, logs.MAX_LINES, None, None, lambda: False, since=since
                )
                failing = False
                async for line in source:  # a cancel lands inside the follow, which then stops its hosts' streams
                    if line is not None:
                        self.add(line)
                        since = max(since, line.timestamp)
            except ApiError as exc:
                level = logging.DEBUG if failing else logging.WARNING
                log.log(level, "%s: cannot follow the app's log: %s", self.target.label, exc)
                failing = True
            await asyncio.sleep(FOLLOW_RETRY)

    def add(self, line: LogLine) -> None:
        self.seq += 1
        self.buffer.append((self.seq, line))
        if len(self.buffer) > MAX_BUFFER:
            self.buffer.popleft()
            if not self.dropped:
                log.warning("%s: %d lines buffered, dropping the oldest until it catches up", self.target.label,
                            MAX_BUFFER)  # fmt: skip
            self.dropped += 1
        self.more.set()

    async def deliver(self) -> None:
        delay = BACKOFF[0]
        while True:
            await self._batch_ready()
            batch = list(itertools.islice(self.buffer, self.transport.max_batch))
            try:
                await self.transport.send([rfc5424(line, self.target.app_name) for _, line in batch])
            except (DeliveryError, OSError) as exc:
                await self.transport.close()
                self._failed(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF[1])
                continue
            delay = BACKOFF[0]
            self._delivered(batch)

    async def _batch_ready(self) -> None:
        """Until there is a line; then, for a lingering transport, until a full batch or the linger is over."""
        while not self.buffer:
            self.more.clear()
            await self.more.wait()
        if self.down or not self.transport.linger:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.transport.linger
        while len(self.buffer) < self.transport.max_batch and loop.time() < deadline:
            self.more.clear()
            with contextlib.suppress(TimeoutError):
                await wait_for(self.more.wait(), deadline - loop.time())

    def _failed(self, exc: Exception) -> None:
        if not self.down:
            log.warning("%s is down (%s); buffering up to %d lines", self.target.label, exc, MAX_BUFFER)
        self.down = True

    def _delivered(self, batch: list[tuple[int, LogLine]]) -> None:
        last = batch[-1][0]
        while self.buffer and self.buffer[0][0] <= last:  # the oldest may have been dropped meanwhile
            self.buffer.popleft()
        newest = max(line.timestamp for _, line in batch)
        self.cursor = newest if self.cursor is None else max(self.cursor, newest)
        if self.down:
            level = logging.WARNING if self.dropped else logging.INFO
            log.log(level, "%s is back; %d lines were dropped while it was down", self.target.label, self.dropped)
        self.down, self.dropped = False, 0


def load_targets(db: Database) -> dict[str, DrainTarget]:
    with db.read() as session:
        rows = session.execute(select(DrainRow, AppRow.name).join(AppRow, AppRow.id == DrainRow.app_id))
        return {
            row.id: DrainTarget(row.id, row.app_id, name, row.url, row.token, row.cursor or row.created_at)
            for row, name in rows
        }


def save_cursors(db: Database, cursors: dict[str, datetime]) -> None:
    with db.write() as session:
        for drain_id, cursor in cursors.items():
            session.execute(update(DrainRow).where(DrainRow.id == drain_id).values(cursor=cursor))


@dataclass
class _Running:
    shipper: Shipper
    task: asyncio.Task[None]
    saved: datetime | None


class Drainer:
    """Keeps one Shipper per drain of the table: drains added or removed take effect within RESCAN seconds (a new
    drain loses nothing meanwhile: it ships from its creation time)."""

    def __init__(self, settings: Settings, db: Database, hub: EventHub) -> None:
        self.settings = settings
        self.db = db
        self.hub = hub
        self.running: dict[str, _Running] = {}

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        saved_at = loop.time()
        try:
            while not self.hub.closed:
                await self._reconcile()
                if loop.time() - saved_at >= SAVE_EVERY:
                    await self._save()
                    saved_at = loop.time()
                await asyncio.sleep(RESCAN)
        finally:
            with contextlib.suppress(Exception):
                await self._save()  # before the shippers go: their cursors go with them
            await self._stop(list(self.running))

    async def _reconcile(self) -> None:
        try:
            targets = await asyncio.to_thread(load_targets, self.db)
        except Exception:
            log.exception("cannot read the drains")
            return
        for drain_id, running in list(self.running.items()):
            if running.task.done() and not running.task.cancelled() and running.task.exception() is not None:
                log.error("%s: shipper failed (restarting)", running.shipper.target.label,
                          exc_info=running.task.exception())  # fmt: skip
                del self.running[drain_id]
        await self._stop([drain_id for drain_id in self.running if drain_id not in targets])
        for drain_id, target in targets.items():
            if drain_id not in self.running:
                self._start(target)

    def _start(self, target: DrainTarget) -> None:
        try:
            transport = transport_for(target.url, target.token)
        except ValidationError as exc:  # checked when stored; only a hand-edited row gets here
            log.error("%s: cannot ship: %s", target.label, exc)
            return
        shipper = Shipper(self.settings, target, transport)
        task = asyncio.create_task(shipper.run(), name=f"drain-{target.id}")
        self.running[target.id] = _Running(shipper, task, target.cursor)

    async def _stop(self, drain_ids: list[str]) -> None:
        stopping = [self.running.pop(drain_id).task for drain_id in drain_ids]
        for task in stopping:
            task.cancel()
        await asyncio.gather(*stopping, return_exceptions=True)

    async def _save(self) -> None:
        changed = {
            drain_id: running.shipper.cursor
            for drain_id, running in self.running.items()
            if running.shipper.cursor is not None and running.shipper.cursor != running.saved
        }
        if not changed:
            return
        try:
            await asyncio.to_thread(save_cursors, self.db, changed)
        except Exception:
            log.exception("cannot save the drains' cursors")
            return
        for drain_id, cursor in changed.items():
            if drain_id in self.running:
                self.running[drain_id].saved = cursor
