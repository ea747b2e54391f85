"""The router core: a route table and live backends per service, kept applied to HAProxy.

Every change recomputes the full `Snapshot` and applies the difference to what HAProxy has:
- servers joining or leaving an existing backend, and map entries, go through the Runtime API (no reload);
- a backend or TCP frontend appearing or disappearing needs a reload with the regenerated config.
The files on disk (config and maps) always describe what HAProxy serves, servers included, so a reload or a
restart loses nothing. If a reload is refused, the parts that fit the running layout are still applied.

A HAProxy adopted after an encomd restart keeps the servers it had for ADOPT_GRACE seconds wherever discoverd
reports none: discoverd may have restarted too (its memory store starts empty) and hosts re-register their jobs
only as they adopt them and heartbeat. Once discoverd lists any server of a backend, or the grace is over,
discoverd alone decides.

A route's own certificate is checked on its own (`haproxy -c` on a minimal config, once per distinct PEM) before it
enters the snapshot: one that HAProxy refuses is left out with a logged error (the route is served with the
default certificate), so it can never make every later reload fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace

from encom.api.files import write_private
from encom.api.types import Route
from encom.discoverd.client import TTL_SECONDS
from encom.router.config import (
    MAP_NAMES,
    NOT_FOUND_BACKEND,
    Layout,
    Options,
    Snapshot,
    build_snapshot,
    dynamic_cookie_key,
    pem_digest,
    render_config,
    render_crt_list,
    render_map,
    route_key,
    route_pem,
    server_name,
    servers_in_config,
)
from encom.router.haproxy import HAPROXY_BIN, ConfigError, HAProxy, HAProxyError
from encom.router.runtime import RuntimeAPIError

SWEEP_SECONDS = 2.0
# A server just put in maintenance is usually a job being drained by its host, which waits for the connections to
# its port to go away: sweep it this often for LINGER_FAST seconds (then every SWEEP_SECONDS, for long-lived
# connections such as websockets).
LINGER_POLL = 0.1
LINGER_FAST = 15.0
DYNAMIC_SERVER_IDS = 100_000  # servers from the config file are numbered 1, 2, ...; runtime ones from here
RESTART_DELAY_MAX = 30.0
ADOPT_GRACE = TTL_SECONDS  # > a heartbeat interval plus a host's adoption and health check

log = logging.getLogger(__name__)

__all__ = ["Router", "fit_layout", "route_key"]


class Router:
    def __init__(self, options: Options, binary: str = HAPROXY_BIN, adopt_grace: float = ADOPT_GRACE) -> None:
        self.options = options
        self.adopt_grace = adopt_grace
        self.kept: dict[str, frozenset[str]] = {}  # backend -> servers an adopted HAProxy had (see above)
        self.haproxy = HAProxy(options, binary)
        self.routes: dict[str, Route] = {}
        self.servers: dict[str, set[str]] = {}
        self.applied: Snapshot | None = None  # None: unknown (adopted HAProxy); the next apply reloads
        self.reloads = 0
        self.last_error: str | None = None
        self._failed_layout: Layout | None = None  # a layout whose reload failed: not retried until the layout changes
        self._lingering: dict[str, set[str]] = {}  # backend -> servers in maintenance, to delete when idle
        self._linger_fast_until = 0.0  # monotonic time until which lingering servers are swept every LINGER_POLL
        self._lock = asyncio.Lock()
        self._held = 0
        self._server_ids = itertools.count(DYNAMIC_SERVER_IDS)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._cert_checks: dict[str, str | None] = {}  # sha256 of a route PEM -> HAProxy's refusal, None if fine
        self.cert_errors: dict[str, str] = {}  # route key -> why its certificate is not served

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Adopt a HAProxy left running for us, or start one serving the current state."""
        self._closing = False
        self.kept = {}
        async with self._lock:
            if await self.haproxy.adopt():
                self.applied = None
                self._keep_adopted_servers()
            else:
                await self._check_certs()
                target = self.desired()
                self._write_maps(target)
                self._write_certs(target)
                await self.haproxy.start(render_config(target, self.options))
                self.applied = target
        self._tasks = [
            asyncio.create_task(self._supervise(), name="router-haproxy-supervisor"),
            asyncio.create_task(self._sweep(), name="router-server-sweeper"),
        ]
        if self.kept:
            self._tasks.append(asyncio.create_task(self._end_grace(), name="router-adopt-grace"))

    async def close(self, detach: bool = False) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        async with self._lock:
            await self.haproxy.stop(detach=detach)

    # ------------------------------------------------------------ state changes

    def services(self) -> set[str]:
        return {r.service for r in self.routes.values()}

    def desired(self) -> Snapshot:
        snapshot = build_snapshot(self._servable_routes(), self.servers)
        if not self.kept:
            return snapshot
        backends = {
            name: backend if backend.servers else replace(backend, servers=self.kept.get(name, frozenset()))
            for name, backend in snapshot.backends.items()
        }
        return replace(snapshot, backends=backends)

    def _servable_routes(self) -> list[Route]:
        """The routes, without the certificates HAProxy refused (or that were not checked yet)."""
        routes = []
        for key, route in self.routes.items():
            pem = route_pem(route)
            if pem is not None and (error := self._cert_checks.get(pem_digest(pem), "not checked yet")) is not None:
                self.cert_errors[key] = error
                route = route.model_copy(update={"certificate": None, "key": None})
            routes.append(route)
        return routes

    async def _check_certs(self) -> None:
        """Check every route certificate not seen before with HAProxy; forget the results no route needs."""
        wanted: dict[str, tuple[str, str]] = {}  # digest -> (pem, a route key using it)
        for key, route in sorted(self.routes.items()):
            pem = route_pem(route)
            if pem is not None:
                wanted.setdefault(pem_digest(pem), (pem, key))
        self._cert_checks = {d: e for d, e in self._cert_checks.items() if d in wanted}
        self.cert_errors = {}
        for digest, (pem, key) in wanted.items():
            if digest in self._cert_checks:
                continue
            try:
                await self.haproxy.check_cert(pem)
                self._cert_checks[digest] = None
            except HAProxyError as exc:
                self._cert_checks[digest] = str(exc)
                route = self.routes[key]
                log.error(
                    "route %s (%s): certificate refused, serving the default one instead: %s", key, route.domain, exc
                )

    def _keep_adopted_servers(self) -> None:
        try:
            config = self.options.config_path.read_text()
        except OSError as exc:
            log.warning("cannot read the adopted haproxy's config: %s", exc)
            return
        self.kept = servers_in_config(config)
        if self.kept:
            count = sum(len(addrs) for addrs in self.kept.values())
            log.info(
                "keeping the adopted haproxy's %d servers for up to %.0fs (discoverd refills)", count, self.adopt_grace
            )

    async def _end_grace(self) -> None:
        await asyncio.sleep(self.adopt_grace)
        self.kept = {}
        log.info("adoption grace over: servers follow discoverd alone")
        await self.apply()

    async def set_routes(self, routes: Iterable[Route]) -> None:
        self.routes = {route_key(r.id): r for r in routes}
        await self.apply()

    async def add_route(self, route: Route) -> None:
        self.routes[route_key(route.id)] = route
        await self.apply()

    async def remove_route(self, route_id: str) -> None:
        if self.routes.pop(route_key(route_id), None) is not None:
            await self.apply()

    async def remove_app(self, app_id: str) -> None:
        before = len(self.routes)
        self.routes = {k: r for k, r in self.routes.items() if r.app_id != app_id}
        if len(self.routes) != before:
            await self.apply()

    async def set_backends(self, service: str, addrs: Iterable[str]) -> None:
        self.servers[service] = set(addrs)
        await self.apply()

    def forget_service(self, service: str) -> None:
        """Drop the servers of a service no longer routed (its backend is already gone from the routes)."""
        self.servers.pop(service, None)

    async def backend_up(self, service: str, addr: str) -> None:
        self.servers.setdefault(service, set()).add(addr)
        await self.apply()

    async def backend_down(self, service: str, addr: str) -> None:
        self.servers.setdefault(service, set()).discard(addr)
        await self.apply()

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Collect changes and apply them once at the end (a full resync must not reload per route)."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
        await self.apply()

    # ------------------------------------------------------------ applying

    async def apply(self) -> None:
        if self._held:
            return
        async with self._lock:
            if not self.haproxy.running():
                return  # the supervisor restarts it and applies again
            await self._check_certs()
            await self._apply(self.desired())

    async def _apply(self, target: Snapshot) -> None:
        applied = self.applied
        if applied is not None and applied.layout() == target.layout():
            try:
                await self._apply_runtime(applied, target)
                return
            except RuntimeAPIError as exc:
                log.warning("runtime update failed (%s); reloading instead", exc)
        try:
            if target.layout() == self._failed_layout and applied is not None:
                raise HAProxyError(f"not retrying the failed reload: {self.last_error}")
            await self._reload(target, applied)
        except HAProxyError as exc:
            self._failed_layout = target.layout()
            self.last_error = str(exc)
            log.error("router reload failed; keeping the running configuration: %s", exc)
            if applied is not None:
                with contextlib.suppress(RuntimeAPIError):
                    await self._apply_runtime(applied, fit_layout(target, applied))

    async def _reload(self, target: Snapshot, applied: Snapshot | None) -> None:
        config = render_config(target, self.options)
        # The crt-list the config names must be there to check it. Its certificates were checked one by one, so
        # if the reload fails after all, the list on disk is still one HAProxy can start with.
        self._write_certs(target)
        candidate = await self.haproxy.validate(config)  # before the maps change on disk
        if applied is not None:
            self._check_ports_free(set(target.tcp_frontends) - set(applied.tcp_frontends))
        self._write_maps(target)
        await self.haproxy.install(candidate)
        self._remove_stale_certs(target)
        self.applied = target
        self._lingering.clear()
        self.reloads += 1
        self.last_error = None
        self._failed_layout = None

    def _check_ports_free(self, ports: Iterable[int]) -> None:
        """A port taken by another process fails the reload only after HAProxy paused its listeners for ~2 s
        of bind retries; find out first."""
        for port in sorted(ports):
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((self.options.bind, port))
                except OSError as exc:
                    raise ConfigError(f"TCP route port {port} is not available: {exc}") from None

    async def _apply_runtime(self, old: Snapshot, new: Snapshot) -> None:
        self.applied = None  # unknown until every step succeeded
        rt = self.haproxy.runtime
        for name, backend in new.backends.items():
            for addr in sorted(backend.servers - old.backends[name].servers):
                await self._server_up(name, addr, backend.sticky)
        hosts = self.options.map_path("hosts")
        for key in sorted(old.hosts.keys() - new.hosts.keys()):
            await rt.del_map_entry(hosts, key)
        for key, value in sorted(new.hosts.items()):
            if old.hosts.get(key) != value:
                await rt.set_map_entry(hosts, key, value, exists=key in old.hosts)
        if old.paths != new.paths:
            await rt.replace_map(self.options.map_path("paths"), list(new.paths))
        if old.wildcards != new.wildcards:
            await rt.replace_map(self.options.map_path("wildcards"), list(new.wildcards))
        # (the redirect maps are only loaded when there is an HTTPS frontend to redirect to and a route redirects)
        redirect_maps = self.options.https and old.redirecting
        if old.redirects != new.redirects and redirect_maps:
            await rt.replace_map(self.options.map_path("redirects"), sorted(new.redirects.items()))
        if old.redirect_wildcards != new.redirect_wildcards and redirect_maps:
            await rt.replace_map(self.options.map_path("redirect_wildcards"), list(new.redirect_wildcards))
        for name, backend in new.backends.items():
            for addr in sorted(old.backends[name].servers - backend.servers):
                await self._server_down(name, addr)
        self.applied = new
        self._write_maps(new)
        self.haproxy.write_file(self.options.config_path, render_config(new, self.options))

    async def _server_up(self, backend: str, addr: str, sticky: bool) -> None:
        lingering = self._lingering.get(backend, set())
        if addr in lingering:
            lingering.discard(addr)
            await self.haproxy.runtime.enable_server(backend, addr)
        else:
            cookie_key = dynamic_cookie_key(backend) if sticky else None
            await self.haproxy.runtime.add_server(backend, addr, next(self._server_ids), cookie_key)

    async def _server_down(self, backend: str, addr: str) -> None:
        """Maintenance at once (no new requests); deleted when its connections are gone."""
        await self.haproxy.runtime.disable_server(backend, addr)
        if not await self.haproxy.runtime.delete_server(backend, addr):
            self._lingering.setdefault(backend, set()).add(addr)
            self._linger_fast_until = time.monotonic() + LINGER_FAST

    def _write_maps(self, snapshot: Snapshot) -> None:
        maps = snapshot.maps()
        for name in MAP_NAMES:
            self.haproxy.write_file(self.options.map_path(name), render_map(maps[name]))

    def _write_certs(self, snapshot: Snapshot) -> None:
        """Each route certificate as `certs/<route>.pem` (0600), then the crt-list naming them."""
        self.options.certs_dir.mkdir(mode=0o700, exist_ok=True)
        for cert in snapshot.certs:
            path = self.options.cert_path(cert.name)
            with contextlib.suppress(OSError):
                if path.read_text() == cert.pem:
                    continue
            write_private(path, cert.pem)
        self.haproxy.write_file(self.options.crt_list_path, render_crt_list(snapshot, self.options))

    def _remove_stale_certs(self, snapshot: Snapshot) -> None:
        """After a reload: the certificate files no longer listed (HAProxy read what it serves at the reload)."""
        keep = {self.options.cert_path(c.name) for c in snapshot.certs}
        for path in self.options.certs_dir.glob("*.pem"):
            if path not in keep:
                path.unlink(missing_ok=True)

    # ------------------------------------------------------------ background

    async def _sweep(self) -> None:
        last = 0.0
        while True:
            await asyncio.sleep(LINGER_POLL)
            now = time.monotonic()
            if not self._lingering or (now >= self._linger_fast_until and now - last < SWEEP_SECONDS):
                continue
            last = now
            async with self._lock:
                await self._delete_lingering()

    async def _delete_lingering(self) -> None:
        """Delete the servers in maintenance that no request uses any more.

        A connection that was serving a request when its server entered maintenance goes back to the server's idle
        pool once the response is sent; HAProxy never reuses it (the server is in maintenance) but keeps it open
        until its purge task gets to it (a share every 5 s), and refuses `del server` meanwhile. The job's host
        drains by waiting until nothing is connected to the job's port, so such connections are closed as soon as
        none is in use any more (`purge_idle`)."""
        rt = self.haproxy.runtime
        for backend, addrs in list(self._lingering.items()):
            conns: dict[str, tuple[int, int]] | None = None
            for addr in sorted(addrs):
                try:
                    if await rt.delete_server(backend, addr):
                        addrs.discard(addr)
                        continue
                    if conns is None:
                        conns = await rt.connections(backend)
                    used, idle = conns.get(server_name(addr), (1, 0))
                    if used == 0 and idle > 0:
                        await rt.purge_idle(backend, addr)
                        if await rt.delete_server(backend, addr):
                            addrs.discard(addr)
                except RuntimeAPIError as exc:
                    log.debug("deleting %s/%s: %s", backend, addr, exc)
            if not addrs:
                del self._lingering[backend]

    async def _supervise(self) -> None:
        """Restart HAProxy whenever it dies, from the last applied configuration on disk."""
        delay = 0.5
        while True:
            await self.haproxy.wait_exit()
            if self._closing:
                return
            log.error("haproxy exited unexpectedly:\n%s", self.haproxy.log_tail())
            try:
                async with self._lock:
                    self._lingering.clear()
                    await self.haproxy.start()
                delay = 0.5
                await self.apply()
            except (HAProxyError, RuntimeAPIError) as exc:
                log.error("restarting haproxy failed (retrying in %.1fs): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_DELAY_MAX)


def fit_layout(target: Snapshot, layout: Snapshot) -> Snapshot:
    """`target` cut down to what `layout`'s running configuration can serve without a reload."""
    backends = {}
    for name, backend in layout.backends.items():
        wanted = target.backends.get(name)
        ok = wanted is not None and wanted.mode == backend.mode
        backends[name] = replace(wanted, sticky=backend.sticky) if wanted is not None and ok else backend
    known = set(backends) | {NOT_FOUND_BACKEND}
    return replace(
        target,
        backends=backends,
        hosts={k: v for k, v in target.hosts.items() if v in known},
        # the running config has no path (wildcard) lookup when it was rendered without such routes
        paths=tuple((k, v) for k, v in target.paths if v in known) if layout.paths else (),
        wildcards=tuple((k, v) for k, v in target.wildcards if v in known) if layout.wildcards else (),
        tcp_frontends=dict(layout.tcp_frontends),
        certs=layout.certs,
        # nor redirect lookups when no route redirected
        redirects=target.redirects if layout.redirecting else dict.fromkeys(target.redirects, "0"),
        redirect_wildcards=(
            target.redirect_wildcards if layout.redirecting else tuple((k, "0") for k, _ in target.redirect_wildcards)
        ),
        redirecting=layout.redirecting,
    )
