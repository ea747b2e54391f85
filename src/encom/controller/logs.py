"""App logs: fan-in from every host agent registered in discoverd, merged by time; and the live follow of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session

from encom.api import ndjson as ndjson_stream
from encom.api.aio import wait_for
from encom.api.errors import ApiError, NotFound, ValidationError
from encom.api.settings import Settings
from encom.api.types import LogLine, utcnow
from encom.controller import apps
from encom.controller.db import Database
from encom.controller.models import AppRow, JobRow
from encom.discoverd.client import HOST_SERVICE, DiscoverdClient
from encom.host.client import HostClient

MAX_LINES = 10000
RELIST = 3.0  # seconds between looks at discoverd for hosts that came or went while following
HISTORY_WAIT = 5.0  # a host whose history takes longer joins the follow with live lines only
KEEPALIVE = 10.0  # seconds of silence before the follow sends a keepalive
RETRY = (0.5, 1.0, 2.0, 3.0)  # reconnect delays of a host's follow (the last one repeats)
log = logging.getLogger(__name__)


def check_lines(lines: int) -> None:
    if not 1 <= lines <= MAX_LINES:
        raise ValidationError(f"lines must be between 1 and {MAX_LINES}")


def check_job(session: Session, app: AppRow, job_id: str) -> None:
    """404 unless `job_id` is a job of `app` (the scheduler has reported it)."""
    row = session.get(JobRow, job_id)
    if row is None or row.app_id != app.id:
        raise NotFound(f"no job {job_id} in app {app.name}")


def log_target(db: Database, app_ref: str, job_id: str | None) -> str:
    """The app's id (404 for an unknown app, or a job that is not the app's). Blocking: run in a thread."""
    with db.read() as session:
        app = apps.find_app(session, app_ref)
        if job_id is not None:
            check_job(session, app, job_id)
        return app.id


async def host_urls(settings: Settings) -> list[str]:
    async with DiscoverdClient(settings.discoverd_url, settings.internal_secret) as discoverd:
        try:
            instances = await discoverd.instances(HOST_SERVICE)
        except ApiError as exc:
            if exc.status == 404:
                return []
            raise
    return [i.meta["url"] for i in instances if i.meta.get("url")]


async def _host_log(
    settings: Settings, url: str, app_id: str, lines: int, process_type: str | None, job_id: str | None
) -> list[LogLine]:
    try:
        async with HostClient(url, settings.internal_secret) as host:
            return await host.app_log(app_id, lines, process_type, job_id)
    except ApiError as exc:
        log.warning("no logs from host %s: %s", url, exc)
        return []


async def app_log(
    settings: Settings, app_id: str, lines: int, process_type: str | None, job_id: str | None = None
) -> list[LogLine]:
    check_lines(lines)
    urls = await host_urls(settings)
    parts = await asyncio.gather(*(_host_log(settings, url, app_id, lines, process_type, job_id) for url in urls))
    merged = sorted((line for part in parts for line in part), key=lambda line: line.timestamp)
    return merged[-lines:]


# ---------------------------------------------------------------- follow


@dataclass
class _Follow:
    settings: Settings
    app_id: str
    lines: int
    process_type: str | None
    job_id: str | None
    queue: asyncio.Queue[tuple[str, list[LogLine]]] = field(default_factory=asyncio.Queue)
    hosts: set[str] = field(default_factory=set)  # as discoverd listed them last
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    started: datetime = field(default_factory=utcnow)
    after: datetime | None = None  # resume: every line after this time (history included), not the last N

    def watch(self, url: str, history: bool) -> None:
        self.tasks[url] = asyncio.create_task(self._host(url, history), name=f"log-follow-{url}")

    async def _host(self, url: str, history: bool) -> None:
        """Follow one host's lines for as long as discoverd lists it; reconnect (catching up from the last line
        seen) when its stream breaks. With `history`, its last lines first go to the queue as ("history", …)."""
        since = self.after if self.after is not None else (None if history else self.started)
        attempt = 0
        try:
            while True:
                got_history: list[LogLine] | None = [] if history else None
                try:
                    async with HostClient(url, self.settings.internal_secret) as host:
                        source = host.follow_app_log(
                            self.app_id, self.lines if since is None else MAX_LINES, self.process_type,
                            self.job_id, since,
                        )  # fmt: skip
                        async for line in source:
                            if line is None:
                                if got_history is not None:
                                    self.queue.put_nowait(("history", got_history))
                                    history, got_history = False, None
                                continue
                            since = line.timestamp if since is None else max(since, line.timestamp)
                            if got_history is not None:
                                got_history.append(line)
                            else:
                                self.queue.put_nowait(("live", [line]))
                                attempt = 0  # a working stream: the next break retries at once
                    log.info("host %s ended its log stream", url)
                except ApiError as exc:
                    log.info("log stream of host %s broke: %s", url, exc)
                if history:  # never got it: the merge must not wait for this host
                    self.queue.put_nowait(("history", []))
                    history = False
                if since is None:
                    since = self.started
                if url not in self.hosts:
                    return
                await asyncio.sleep(RETRY[min(attempt, len(RETRY) - 1)])
                attempt += 1
                if url not in self.hosts:
                    return
        finally:
            self.tasks.pop(url, None)

    async def relist(self) -> None:
        while True:
            await asyncio.sleep(RELIST)
            try:
                self.hosts = set(await host_urls(self.settings))
            except ApiError as exc:
                log.warning("cannot list hosts for a log follow: %s", exc)
                continue
            for url in self.hosts - set(self.tasks):
                self.watch(url, history=False)

    async def run(self, ended: Callable[[], bool], hosts: list[str]) -> AsyncIterator[LogLine | None]:
        self.hosts = set(hosts)
        for url in self.hosts:
            self.watch(url, history=True)
        relister = asyncio.create_task(self.relist())
        try:
            merged: list[LogLine] = []
            waiting = len(self.hosts)
            deadline = asyncio.get_running_loop().time() + HISTORY_WAIT
            live: list[LogLine] = []
            while waiting:
                left = deadline - asyncio.get_running_loop().time()
                try:
                    kind, lines = await wait_for(self.queue.get(), max(0.0, left))
                except TimeoutError:
                    break
                if kind == "history":
                    merged.extend(lines)
                    waiting -= 1
                else:
                    live.extend(lines)
            merged.sort(key=lambda line: line.timestamp)
            for line in merged[-self.lines :]:
                yield line
            yield None
            for line in sorted(live, key=lambda line: line.timestamp):
                yield line
            while not ended():
                try:
                    _, lines = await wait_for(self.queue.get(), KEEPALIVE)
                except TimeoutError:
                    yield None
                    continue
                for line in sorted(lines, key=lambda line: line.timestamp)[-self.lines :]:
                    yield line  # a history that came late comes now, its last lines only
        finally:
            relister.cancel()
            for task in [relister, *self.tasks.values()]:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(relister, *self.tasks.values(), return_exceptions=True)


async def follow_app_log(
    settings: Settings,
    app_id: str,
    lines: int,
    process_type: str | None,
    job_id: str | None,
    ended: Callable[[], bool],
    since: datetime | None = None,
) -> AsyncIterator[LogLine | None]:
    """The app's last lines from every host merged by time (with `since`, its last lines after that time: how
    a log drain resumes), None (the history has been sent), then every new
    line of every host as it comes, hosts found in discoverd later included (re-listed every few seconds); a
    host whose stream breaks is reconnected and caught up. A None also after KEEPALIVE seconds of silence.
    Hosts are listed before this returns, so discoverd's errors raise here."""
    check_lines(lines)
    hosts = await host_urls(settings)
    return _Follow(settings, app_id, lines, process_type, job_id, after=since).run(ended, hosts)


async def ndjson(
    settings: Settings,
    app_id: str,
    lines: int,
    process_type: str | None,
    job_id: str | None,
    follow: bool,
    ended: Callable[[], bool],
    since: datetime | None = None,
) -> AsyncIterator[bytes]:
    """The body of `GET /apps/{app}/log/stream`: LogLine JSON lines; with follow, `{"live":true}` once the
    history has been sent (with `since`: the lines after it, how `encom log -f` resumes), then new lines and
    empty lines as keepalives."""
    if follow:
        source = await follow_app_log(settings, app_id, lines, process_type, job_id, ended, since)
        return ndjson_stream.follow(source)
    return ndjson_stream.lines(await app_log(settings, app_id, lines, process_type, job_id))
