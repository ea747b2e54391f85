"""What HAProxy should serve, derived from routes and live backends, and its rendering as config and map files.

Everything here is pure: `build_snapshot` turns the route table and the discoverd backends into a `Snapshot`;
`render_config` and `render_map` turn a snapshot into text. The driver and the router core do the I/O.

HTTP routing is three map lookups on the request, first hit wins:
  paths.map      `<domain><path-prefix>` (longest first, `map_beg`) for routes with a path other than "/"
  hosts.map      `<domain>` exact (`map_str`, a tree lookup)
  wildcards.map  `.<suffix>` for `*.<suffix>` domains (longest first, `map_end`: the most specific wins)
Unknown hosts go to a backend answering 404; a routed service with no live server answers 503.

Per route, on top of that:
  sticky          the service's backend pins a client to a server with a cookie (`encom_sticky`). HAProxy 2.6
                  refuses `cookie <value>` on servers added at runtime, so the cookie is HAProxy's "dynamic" one:
                  a hash of the backend's key and the server's address and port, the same whether the server came
                  from the config file or from `add server` (after which the router re-sets the key, which makes
                  HAProxy compute it: see `RuntimeAPI.add_server`). A client whose server is gone or in
                  maintenance is sent to another one and gets a new cookie (`option redispatch` covers the rest).
  certificate     served by SNI on the HTTPS frontend through a crt-list (`certs.list`, one `certs/<route>.pem` per
                  route: chain + key, 0600); the cluster's wildcard certificate stays the default. Changes reload.
  redirect_https  plain HTTP for the route's domain answers 301 to https://; `redirects.map` (exact domains,
                  `map_str`) and `redirect_wildcards.map` (`.suffix`, `map_end`) say "1" or "0" per domain (the
                  oldest route of a domain decides), so an exact domain that does not redirect is not caught by a
                  redirecting wildcard.
"""

from __future__ import annotations

import hashlib
import re
import resource
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from encom.api.types import Route
from encom.router.access import ACCESS_LINE_MAX, ACCESS_LOG_FORMAT

NOT_FOUND_BACKEND = "encom_not_found"
NOT_FOUND_BODY = "No such app\\n"
UNAVAILABLE_BODY = "Service Unavailable\\n"
MAP_NAMES = ("hosts", "paths", "wildcards", "redirects", "redirect_wildcards")
STICKY_COOKIE = "encom_sticky"
# Arguments of every server, in the config file and in `add server` alike. A high weight gives each server more
# points in the consistent-hash ring that `balance random` draws from, so the spread is even.
SERVER_ARGS = "weight 100"
# Requests one HTTP server (a web job) is given at once by a router; the rest wait in the backend's queue for at
# most QUEUE_TIMEOUT, then get a 503 (Heroku's routers allow 50 active requests per dyno and queue the rest).
# Without it a burst goes straight to the job, whose backlog holds it until `timeout server` answers 504.
# TCP routes carry long-lived connections (databases, streams): their servers get no limit.
SERVER_MAXCONN = 100
QUEUE_TIMEOUT = "5s"

_DOMAIN_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
_PATH_RE = re.compile(r"^/[^\s#]*$")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

Mode = Literal["http", "tcp"]
# (backends (name, mode, sticky), TCP frontends (port, backend), certificates (name, SNI filter, sha256 of the PEM),
#  whether there are path routes, wildcard routes, routes redirecting to HTTPS)
Layout = tuple[
    frozenset[tuple[str, Mode, bool]],
    frozenset[tuple[int, str]],
    frozenset[tuple[str, str, str]],
    tuple[bool, bool, bool],
]


@dataclass(frozen=True)
class Backend:
    name: str
    mode: Mode
    service: str
    servers: frozenset[str] = frozenset()  # "host:port"
    sticky: bool = False


@dataclass(frozen=True)
class Cert:
    """A route's own certificate: `certs/<name>.pem` served for the SNI name `sni` (may be `*.domain`)."""

    name: str
    sni: str
    pem: str  # chain + key

    @property
    def digest(self) -> str:
        return pem_digest(self.pem)


@dataclass(frozen=True)
class Snapshot:
    """The full state HAProxy should have. Equal snapshots mean nothing to do."""

    backends: Mapping[str, Backend] = field(default_factory=dict)
    hosts: Mapping[str, str] = field(default_factory=dict)  # domain -> backend
    paths: tuple[tuple[str, str], ...] = ()  # (domain+path prefix, backend), longest first
    wildcards: tuple[tuple[str, str], ...] = ()  # (".suffix", backend), longest first
    tcp_frontends: Mapping[int, str] = field(default_factory=dict)  # port -> backend
    certs: tuple[Cert, ...] = ()  # by name
    redirects: Mapping[str, str] = field(default_factory=dict)  # domain -> "1" (redirect to https) or "0"
    redirect_wildcards: tuple[tuple[str, str], ...] = ()  # (".suffix", "1"|"0"), longest first
    redirecting: bool = False  # the HTTP frontend looks the redirect maps up (some route redirects)

    def layout(self) -> Layout:
        """What only a reload can change: the set of backends (and their stickiness), of TCP frontends and of
        certificates, and whether path, wildcard and redirecting routes exist (their lookups are left out of the
        config when none does: each costs every request a map lookup)."""
        backends = frozenset((b.name, b.mode, b.sticky) for b in self.backends.values())
        certs = frozenset((c.name, c.sni, c.digest) for c in self.certs)
        lookups = (bool(self.paths), bool(self.wildcards), self.redirecting)
        return backends, frozenset(self.tcp_frontends.items()), certs, lookups

    def maps(self) -> dict[str, list[tuple[str, str]]]:
        return {
            "hosts": sorted(self.hosts.items()),
            "paths": list(self.paths),
            "wildcards": list(self.wildcards),
            "redirects": sorted(self.redirects.items()),
            "redirect_wildcards": list(self.redirect_wildcards),
        }


@dataclass(frozen=True)
class Options:
    """Where and how HAProxy listens; fixed for the life of a router."""

    dir: Path
    bind: str = "127.0.0.1"
    http_port: int = 80
    https_port: int | None = None
    cert_pem: Path | None = None  # certificate chain + key in one file, for HTTPS
    balance: str = "random"
    maxconn: int = 0  # 0 = from the fd limit
    hard_stop_after: str = "30s"
    access_log: bool = False  # one line per HTTP request to HAProxy's stdout, the FIFO `access_pipe` (access.py)

    @property
    def access_pipe(self) -> Path:
        return self.dir / "access.fifo"

    @property
    def stats_socket(self) -> Path:
        return self.dir / "haproxy.sock"

    @property
    def master_socket(self) -> Path:
        return self.dir / "haproxy-master.sock"

    @property
    def config_path(self) -> Path:
        return self.dir / "haproxy.cfg"

    @property
    def pid_path(self) -> Path:
        return self.dir / "haproxy.pid"

    @property
    def log_path(self) -> Path:
        return self.dir / "haproxy.log"

    def map_path(self, name: str) -> Path:
        return self.dir / f"{name}.map"

    @property
    def certs_dir(self) -> Path:
        return self.dir / "certs"

    @property
    def crt_list_path(self) -> Path:
        return self.dir / "certs.list"

    def cert_path(self, name: str) -> Path:
        return self.certs_dir / f"{name}.pem"

    @property
    def https(self) -> bool:
        return self.https_port is not None and self.cert_pem is not None


def backend_name(service: str, mode: Mode) -> str:
    return f"{'h' if mode == 'http' else 't'}_{_NAME_UNSAFE.sub('_', service)}"


def backend_mode(name: str) -> Mode:
    """The mode of a backend named by `backend_name`."""
    return "tcp" if name.startswith("t_") else "http"


def server_args(mode: Mode) -> str:
    """A server's arguments by its backend's mode: HTTP servers get `maxconn` (the excess queues)."""
    return f"{SERVER_ARGS} maxconn {SERVER_MAXCONN}" if mode == "http" else SERVER_ARGS


def server_name(addr: str) -> str:
    return "s_" + _NAME_UNSAFE.sub("_", addr)


def route_key(route_id: str) -> str:
    """Route ids arrive as "<uuid>" or "<type>/<uuid>"."""
    return route_id.rsplit("/", 1)[-1]


def cert_name(route_id: str) -> str:
    return _NAME_UNSAFE.sub("_", route_key(route_id))


def dynamic_cookie_key(backend: str) -> str:
    """The key HAProxy hashes with a server's address into its sticky cookie: fixed per backend, so the cookie of a
    server is the same across reloads, restarts and routers."""
    return f"encom-{backend}"


def route_pem(route: Route) -> str | None:
    """The route's certificate chain and key as one PEM file, or None when it has none."""
    if route.type != "http" or not (route.certificate or "").strip() or not (route.key or "").strip():
        return None
    assert route.certificate is not None and route.key is not None
    return route.certificate.strip() + "\n" + route.key.strip() + "\n"


def pem_digest(pem: str) -> str:
    return hashlib.sha256(pem.encode()).hexdigest()


def valid_domain(domain: str) -> bool:
    return bool(_DOMAIN_RE.match(domain)) and ".." not in domain


def valid_route(route: Route) -> bool:
    if route.type == "tcp":
        return route.port is not None and 0 < route.port < 65536
    domain = (route.domain or "").lower()
    return valid_domain(domain) and bool(_PATH_RE.match(route.path or "/"))


def normalize_path(path: str) -> str:
    """Path routes are prefixes ending in "/" (as in Flynn): "/api" serves "/api/…"."""
    return path if path.endswith("/") else path + "/"


def max_connections(listeners: int = 0, nofile: int | None = None) -> int:
    """HAProxy needs about 2 fds per connection plus one per listener and a few dozen of its own; it refuses to
    start when that exceeds the hard RLIMIT_NOFILE (which root cannot raise here)."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if nofile == resource.RLIM_INFINITY or nofile > 1_000_000:
        nofile = 1_000_000
    return max(256, min(100_000, (nofile - 1024 - 2 * listeners) // 2))


def build_snapshot(routes: Iterable[Route], servers: Mapping[str, Set[str]]) -> Snapshot:
    """Routes and live servers per service → the snapshot. Invalid routes are skipped (they would break the config)."""
    backends: dict[str, Backend] = {}
    hosts: dict[str, str] = {}
    paths: dict[str, str] = {}
    wildcards: dict[str, str] = {}
    tcp: dict[int, str] = {}
    certs: dict[str, Cert] = {}  # SNI -> cert
    redirects: dict[str, str] = {}
    redirect_wildcards: dict[str, str] = {}
    for route in sorted(routes, key=lambda r: (r.created_at, r.id)):  # on conflicts the oldest route wins
        if not valid_route(route):
            continue
        mode: Mode = "tcp" if route.type == "tcp" else "http"
        name = backend_name(route.service, mode)
        sticky = route.sticky and mode == "http"
        if name in backends:
            sticky = sticky or backends[name].sticky  # one sticky route makes its service's backend sticky
        backends[name] = Backend(name, mode, route.service, frozenset(servers.get(route.service, ())), sticky)
        if route.type == "tcp":
            assert route.port is not None
            tcp.setdefault(route.port, name)
            continue
        domain = (route.domain or "").lower()
        path = route.path or "/"
        if domain.startswith("*."):
            wildcards.setdefault(domain[1:], name)
            redirect_wildcards.setdefault(domain[1:], "1" if route.redirect_https else "0")
        else:
            redirects.setdefault(domain, "1" if route.redirect_https else "0")
            if path == "/":
                hosts.setdefault(domain, name)
            else:
                paths.setdefault(domain + normalize_path(path), name)
        pem = route_pem(route)
        if pem is not None and domain not in certs:
            certs[domain] = Cert(cert_name(route.id), domain, pem)
    return Snapshot(
        backends=backends,
        hosts=hosts,
        paths=_longest_first(paths),
        wildcards=_longest_first(wildcards),
        tcp_frontends=tcp,
        certs=tuple(sorted(certs.values(), key=lambda c: c.name)),
        redirects=redirects,
        redirect_wildcards=_longest_first(redirect_wildcards),
        redirecting="1" in redirects.values() or "1" in redirect_wildcards.values(),
    )


def _longest_first(entries: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(entries.items(), key=lambda kv: (-len(kv[0]), kv[0])))


def render_map(entries: Iterable[tuple[str, str]]) -> str:
    return "".join(f"{key} {value}\n" for key, value in entries)


def render_crt_list(snapshot: Snapshot, options: Options) -> str:
    """One line per route certificate: `<file> <sni filter>`; the bind's own options (ALPN) apply to each."""
    return "".join(f"{options.cert_path(c.name)} {c.sni}\n" for c in snapshot.certs)


def render_cert_check(pem_path: Path) -> str:
    """A minimal configuration that `haproxy -c` accepts only if it can load `pem_path` as a bind certificate."""
    return f"""\
defaults
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s

frontend check
    bind 127.0.0.1:1 ssl crt {pem_path} alpn h2,http/1.1
    http-request return status 200
"""


# ---------------------------------------------------------------- haproxy.cfg


def render_config(snapshot: Snapshot, options: Options) -> str:
    sections = [
        _global(snapshot, options),
        _defaults(),
        _http_frontend(options, snapshot, tls=False),
    ]
    if options.https:
        sections.append(_http_frontend(options, snapshot, tls=True))
    sections.append(_not_found_backend())
    for port, name in sorted(snapshot.tcp_frontends.items()):
        sections.append(_tcp_frontend(port, name, options))
    for backend in sorted(snapshot.backends.values(), key=lambda b: b.name):
        sections.append(_backend(backend, options))
    return "\n".join(sections)


def _global(snapshot: Snapshot, options: Options) -> str:
    listeners = 2 + len(snapshot.tcp_frontends)
    maxconn = options.maxconn or max_connections(listeners)
    return f"""\
global
    maxconn {maxconn}
    stats socket {options.stats_socket} mode 600 level admin expose-fd listeners
    stats timeout 30s
    hard-stop-after {options.hard_stop_after}
    ssl-default-bind-options ssl-min-ver TLSv1.2
{_log_target(options)}"""


# HAProxy's stdout is the FIFO of access lines (see access.py and HAProxy.start)
ACCESS_LOG_TARGET = f"    log stdout len {ACCESS_LINE_MAX} format raw local0 info\n"
# The HTTP frontends' access line (the request id is captured once the frontend has set it)
ACCESS_LOG_RULES = f"""\
    log global
    http-request capture req.hdr(x-request-id) len 64
    log-format "{ACCESS_LOG_FORMAT}"
"""


def request_headers(proto: str) -> str:
    """What the HTTP frontends tell the apps about each request."""
    return f"""\
    option forwardfor
    http-request set-header X-Forwarded-Proto {proto}
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-header X-Request-Start t=%[date(0,ms)]
    http-request set-header X-Request-Id %[uuid] unless {{ req.hdr(x-request-id) -m found }}
"""


def _log_target(options: Options) -> str:
    return ACCESS_LOG_TARGET if options.access_log else ""


def _access_log(options: Options) -> str:
    return ACCESS_LOG_RULES if options.access_log else ""


def _defaults() -> str:
    return f"""\
defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout queue {QUEUE_TIMEOUT}
    timeout tunnel 1h
    timeout client-fin 10s
    timeout server-fin 10s
    timeout http-request 15s
    timeout http-keep-alive 15s
    retries 3
    option redispatch 1
    http-error status 502 content-type "text/plain" string "Bad Gateway\\n"
    http-error status 503 content-type "text/plain" string "{UNAVAILABLE_BODY}"
    http-error status 504 content-type "text/plain" string "Gateway Timeout\\n"
"""


REQUEST_HOST = "req.hdr(host),field(1,:),lower"  # the request's host, lower case, without a port


def _route_lookups(options: Options, snapshot: Snapshot, redirect: bool) -> str:
    """Path routes first (longest prefix), then the exact host, then wildcards (most specific). With host
    routes only (the common case) it is one lookup straight into `use_backend`."""
    paths, hosts, wildcards = (options.map_path(n) for n in ("paths", "hosts", "wildcards"))
    if not snapshot.paths and not snapshot.wildcards:
        host = "var(txn.host)" if redirect else REQUEST_HOST
        return f"    use_backend %[{host},map_str({hosts},{NOT_FOUND_BACKEND})]\n"
    unless = "unless { var(txn.backend) -m found }"
    lines = [] if redirect else [f"    http-request set-var(txn.host) {REQUEST_HOST}"]
    if snapshot.paths:
        lines.append("    http-request set-var-fmt(txn.hostpath) %[var(txn.host)]%[path]")
        lines.append(f"    http-request set-var(txn.backend) var(txn.hostpath),map_beg({paths})")
    lines.append(f"    http-request set-var(txn.backend) var(txn.host),map_str({hosts}) {unless}")
    if snapshot.wildcards:
        lines.append(f"    http-request set-var(txn.backend) var(txn.host),map_end({wildcards}) {unless}")
    lines.append("    use_backend %[var(txn.backend)] if { var(txn.backend) -m found }")
    return "\n".join(lines) + "\n"


def _http_frontend(options: Options, snapshot: Snapshot, tls: bool) -> str:
    if tls:
        assert options.cert_pem is not None and options.https_port is not None
        bind = (
            f"{options.bind}:{options.https_port} ssl crt {options.cert_pem} crt-list {options.crt_list_path}"
            " alpn h2,http/1.1"
        )
        name, proto = "https", "https"
    else:
        bind, name, proto = f"{options.bind}:{options.http_port}", "http", "http"
    redirect = ""
    if not tls and options.https and snapshot.redirecting:
        port = "" if options.https_port == 443 else f":{options.https_port}"
        redirect = f"""\
    http-request set-var(txn.host) {REQUEST_HOST}
    http-request set-var(txn.redirect) var(txn.host),map_str({options.map_path("redirects")})
    http-request set-var(txn.redirect) var(txn.host),map_end({options.map_path("redirect_wildcards")}) \
unless {{ var(txn.redirect) -m found }}
    http-request redirect location https://%[var(txn.host)]{port}%[pathq] code 301 if {{ var(txn.redirect) -m str 1 }}
"""
    return f"""\
frontend {name}
    mode http
    bind {bind}
    option idle-close-on-response
{request_headers(proto)}{_access_log(options)}{redirect}{_route_lookups(options, snapshot, bool(redirect))}\
    default_backend {NOT_FOUND_BACKEND}
"""


def _not_found_backend() -> str:
    return f"""\
backend {NOT_FOUND_BACKEND}
    mode http
    http-request return status 404 content-type "text/plain" string "{NOT_FOUND_BODY}"
"""


def _tcp_frontend(port: int, backend: str, options: Options) -> str:
    return f"""\
frontend tcp_{port}
    mode tcp
    bind {options.bind}:{port}
    default_backend {backend}
"""


def _backend(backend: Backend, options: Options) -> str:
    lines = [f"backend {backend.name}", f"    mode {backend.mode}", f"    balance {options.balance}"]
    if backend.mode == "http":
        # Only requests that never reached a server are retried (on another: `option redispatch 1`). Retrying
        # requests that got no response (`empty-response`) would replay requests a server may have acted on, and
        # HAProxy would keep a copy of every request for it: 15 % of the throughput on 2 cores. A planned stop
        # drains the job first (host/drain.py), so it leaves no request without a response.
        lines.append("    retry-on conn-failure")
    if backend.sticky:
        # the key first: HAProxy computes each config server's cookie when it reads the `cookie` line
        lines.append(f"    dynamic-cookie-key {dynamic_cookie_key(backend.name)}")
        lines.append(f"    cookie {STICKY_COOKIE} insert indirect nocache httponly dynamic")
    lines.extend(f"    {server_line(addr, backend.mode)}" for addr in sorted(backend.servers))
    return "\n".join(lines) + "\n"


def servers_in_config(config: str) -> dict[str, frozenset[str]]:
    """Backend name -> server addresses, as a rendered config lists them (what an adopted HAProxy serves)."""
    found: dict[str, set[str]] = {}
    backend: str | None = None
    for line in config.splitlines():
        cols = line.split()
        if not cols:
            continue
        if not line[0].isspace():
            backend = cols[1] if cols[0] == "backend" and len(cols) > 1 else None
        elif backend is not None and cols[0] == "server" and len(cols) > 2:
            found.setdefault(backend, set()).add(cols[2])
    return {name: frozenset(addrs) for name, addrs in found.items()}


def server_line(addr: str, mode: Mode) -> str:
    """`server <name> <addr>`: the same arguments the Runtime API's `add server` gets, so both agree."""
    return f"server {server_name(addr)} {addr} {server_args(mode)}"
