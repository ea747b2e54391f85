"""The router role: HAProxy fed by the controller's routes and discoverd's backends.

Start (or adopt) HAProxy and report ready; then loop: full sync from the controller (`GET /routes`), follow
its route events from the id read just before that sync, and on any error resync. One discoverd watch per
routed service feeds the servers of its backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import httpx
import pydantic

from encom.api.aio import wait_for
from encom.api.client import ca_context
from encom.api.errors import ApiError
from encom.api.files import write_private
from encom.api.netports import reserve_ports
from encom.api.role import RoleContext
from encom.api.settings import Settings
from encom.api.types import Event, Route, ServiceEvent
from encom.bootstrap.tls import router_cert_paths
from encom.controller.client import ControllerClient
from encom.discoverd.client import DiscoverdClient
from encom.router.access import AccessLog, JobDirectory
from encom.router.config import Options
from encom.router.router import Router

ROUTE_EVENTS = ["route", "route_deletion", "app_deletion"]
FIRST_BACKENDS_TIMEOUT = 5.0  # how long a new backend waits for discoverd's current set before going live
RETRY_MAX = 10.0
STREAM_ERRORS = (ApiError, httpx.HTTPError, pydantic.ValidationError, ValueError)

log = logging.getLogger(__name__)


def router_options(settings: Settings) -> Options:
    directory = settings.dir("router")
    return Options(
        dir=directory,
        bind=settings.bind,
        http_port=settings.ports.router_http,
        https_port=settings.ports.router_https,
        cert_pem=combined_cert(settings, directory),
        access_log=True,
    )


def combined_cert(settings: Settings, directory: Path) -> Path | None:
    """HAProxy wants the chain and the key in one file; None (no HTTPS) until bootstrap issued the cert."""
    cert, key = router_cert_paths(settings)
    if not cert.exists() or not key.exists():
        return None
    path = directory / "router-cert.pem"
    write_private(path, cert.read_text().rstrip("\n") + "\n" + key.read_text())
    return path


class Watches:
    """A discoverd watch per routed service, each rebuilding its backend's servers on every (re)connect."""

    def __init__(
        self, discoverd: DiscoverdClient, router: Router, directory: JobDirectory | None = None, retry: float = 0.5
    ) -> None:
        self.discoverd = discoverd
        self.router = router
        self.directory = directory
        self.retry = retry
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.current: dict[str, asyncio.Event] = {}

    def sync(self, services: Iterable[str]) -> set[str]:
        """Watch exactly `services`; returns the ones newly watched."""
        wanted = set(services)
        for service in set(self.tasks) - wanted:
            self.tasks.pop(service).cancel()
            self.current.pop(service, None)
            self.router.forget_service(service)
        started = wanted - set(self.tasks)
        for service in started:
            self.current[service] = asyncio.Event()
            self.tasks[service] = asyncio.create_task(self._watch(service), name=f"router-watch-{service}")
        return started

    async def wait_current(self, services: Iterable[str], seconds: float) -> None:
        """Until each service's first current set has arrived (or `seconds`: it stays empty till then)."""
        events = [self.current[s].wait() for s in services if s in self.current]
        if events:
            with contextlib.suppress(TimeoutError):
                await wait_for(asyncio.gather(*events), seconds)

    async def close(self) -> None:
        tasks = list(self.tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()

    async def _watch(self, service: str) -> None:
        while True:
            try:
                await self._watch_once(service)
            except STREAM_ERRORS as exc:
                log.debug("watch %s: %s; reconnecting", service, exc)
            except Exception:
                log.exception("watch %s failed; reconnecting", service)
            await asyncio.sleep(self.retry)

    async def _watch_once(self, service: str) -> None:
        """One connection: the instances before "current" are the whole set; then live changes."""
        initial: set[str] | None = set()
        async for event in self.discoverd.watch(service):
            initial = await self._on_event(service, event, initial)

    async def _on_event(self, service: str, event: ServiceEvent, initial: set[str] | None) -> set[str] | None:
        addr = event.instance.addr if event.instance is not None else None
        if self.directory is not None and event.instance is not None:
            if event.kind in ("up", "update"):
                self.directory.up(event.instance)
            elif event.kind == "down":
                self.directory.down(event.instance.addr)
        if event.kind == "current":
            await self.router.set_backends(service, initial or set())
            self.current[service].set()
            return None
        if addr is None or event.kind == "leader":
            return initial
        if initial is not None:
            if event.kind == "down":
                initial.discard(addr)
            else:
                initial.add(addr)
        elif event.kind == "down":
            await self.router.backend_down(service, addr)
        else:
            await self.router.backend_up(service, addr)
        return initial


class RouteSync:
    """The controller side: full syncs and route events, applied to the router and its watches."""

    def __init__(self, controller: ControllerClient, router: Router, watches: Watches) -> None:
        self.controller = controller
        self.router = router
        self.watches = watches

    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                last = await self.resync()
                delay = 0.5
                async for event in self.controller.events(object_types=ROUTE_EVENTS, last_event_id=last):
                    await self.handle(event)
                log.info("controller event stream ended; resyncing")
            except Exception as exc:  # never crash the role: its restart would stop HAProxy
                if isinstance(exc, STREAM_ERRORS):
                    log.warning("following controller routes: %s; resyncing in %.1fs", exc, delay)
                else:
                    log.exception("applying controller routes failed; resyncing in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def resync(self) -> int:
        last = await self.controller.last_event_id()
        routes = await self.controller.all_routes()
        await self._changing(lambda: self.router.set_routes(routes))
        log.info("router synced: %d routes (events after %d)", len(routes), last)
        return last

    async def handle(self, event: Event) -> None:
        if event.object_type == "route":
            route = await self._with_key(Route.model_validate(event.data))
            await self._changing(lambda: self.router.add_route(route))
        elif event.object_type == "route_deletion":
            await self._changing(lambda: self.router.remove_route(str(event.data.get("id") or event.object_id)))
        elif event.object_type == "app_deletion":
            await self._changing(lambda: self.router.remove_app(event.app_id or event.object_id))

    async def _with_key(self, route: Route) -> Route:
        """Route events leave the private key out (events are kept and streamed): read it from the routes."""
        if route.certificate is None or route.key is not None:
            return route
        return next((r for r in await self.controller.list_routes(route.app_id) if r.id == route.id), route)

    async def _changing(self, change: Callable[[], Awaitable[None]]) -> None:
        """Apply a route change once, with the current servers of any newly routed service already in it."""
        async with self.router.hold():
            await change()
            started = self.watches.sync(self.router.services())
            await self.watches.wait_current(started, FIRST_BACKENDS_TIMEOUT)


async def run(ctx: RoleContext) -> None:
    settings = ctx.settings
    reserve_ports(settings.ports.tcp_route_start, settings.ports.tcp_route_end)
    options = router_options(settings)
    async with DiscoverdClient(settings.discoverd_url, settings.internal_secret) as discoverd:
        directory = JobDirectory(discoverd, settings.internal_secret)
        access = asyncio.create_task(AccessLog(directory.locate, directory.deliver).run(options.access_pipe))
        try:
            await serve(ctx, Router(options), discoverd, directory)
        finally:
            access.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await access
            await directory.close()


async def serve(ctx: RoleContext, router: Router, discoverd: DiscoverdClient, directory: JobDirectory) -> None:
    settings = ctx.settings
    await router.start()
    ctx.ready.set()
    try:
        async with ControllerClient(
            settings.controller_url, settings.cluster_key, verify=ca_context(settings.ca_cert_path)
        ) as controller:
            watches = Watches(discoverd, router, directory)
            try:
                await RouteSync(controller, router, watches).run()
            finally:
                await watches.close()
    finally:
        await router.close(detach=ctx.detach)
