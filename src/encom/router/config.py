"""What HAProxy should serve, derived from routes and live backends, and its rendering as config and map files.

Everything here is pure: `build_snapshot` turns the route table and the discoverd backends into a `Snapshot`;
`render_config` and `render_map` turn a snapshot into text. The driver and the router core do the I/O.

HTTP routing is three map lookups on the request, first hit wins:
  paths.map      `<domain><path-prefix>` (longest first, `map_beg`) for routes with a path other than "/"
  hosts.map      `<domain>` exact (`map_str`, a tree lookup)
  wildcards.map  `.<suffix>` for `*.<suffix>` domains (longest first, `map_end`: the most specific wins)
Unknown hosts go to a backend answering 404; a routed service with no live server answers 503.
"""

from __future__ import annotations

import re
import resource
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from encom.api.types import Route

NOT_FOUND_BACKEND = "encom_not_found"
NOT_FOUND_BODY = "No such app\\n"
UNAVAILABLE_BODY = "Service Unavailable\\n"
MAP_NAMES = ("hosts", "paths", "wildcards")
# Arguments of every server, in the config file and in `add server` alike. A high weight gives each server more
# points in the consistent-hash ring that `balance random` draws from, so the spread is even.
SERVER_ARGS = "weight 100"

_DOMAIN_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
_PATH_RE = re.compile(r"^/[^\s#]*$")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")

Mode = Literal["http", "tcp"]
Layout = tuple[frozenset[tuple[str, Mode]], frozenset[tuple[int, str]]]  # (backends, TCP frontends)


@dataclass(frozen=True)
class Backend:
    name: str
    mode: Mode
    service: str
    servers: frozenset[str] = frozenset()  # "host:port"


@dataclass(frozen=True)
class Snapshot:
    """The full state HAProxy should have. Equal snapshots mean nothing to do."""

    backends: Mapping[str, Backend] = field(default_factory=dict)
    hosts: Mapping[str, str] = field(default_factory=dict)  # domain -> backend
    paths: tuple[tuple[str, str], ...] = ()  # (domain+path prefix, backend), longest first
    wildcards: tuple[tuple[str, str], ...] = ()  # (".suffix", backend), longest first
    tcp_frontends: Mapping[int, str] = field(default_factory=dict)  # port -> backend

    def layout(self) -> Layout:
        """What only a reload can change: the set of backends and of TCP frontends."""
        backends = frozenset((b.name, b.mode) for b in self.backends.values())
        return backends, frozenset(self.tcp_frontends.items())

    def maps(self) -> dict[str, list[tuple[str, str]]]:
        return {"hosts": sorted(self.hosts.items()), "paths": list(self.paths), "wildcards": list(self.wildcards)}


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


def backend_name(service: str, mode: Mode) -> str:
    return f"{'h' if mode == 'http' else 't'}_{_NAME_UNSAFE.sub('_', service)}"


def server_name(addr: str) -> str:
    return "s_" + _NAME_UNSAFE.sub("_", addr)


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
    for route in sorted(routes, key=lambda r: (r.created_at, r.id)):  # on conflicts the oldest route wins
        if not valid_route(route):
            continue
        mode: Mode = "tcp" if route.type == "tcp" else "http"
        name = backend_name(route.service, mode)
        backends[name] = Backend(name, mode, route.service, frozenset(servers.get(route.service, ())))
        if route.type == "tcp":
            assert route.port is not None
            tcp.setdefault(route.port, name)
            continue
        domain = (route.domain or "").lower()
        path = route.path or "/"
        if domain.startswith("*."):
            wildcards.setdefault(domain[1:], name)
        elif path == "/":
            hosts.setdefault(domain, name)
        else:
            paths.setdefault(domain + normalize_path(path), name)
    return Snapshot(
        backends=backends,
        hosts=hosts,
        paths=_longest_first(paths),
        wildcards=_longest_first(wildcards),
        tcp_frontends=tcp,
    )


def _longest_first(entries: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(entries.items(), key=lambda kv: (-len(kv[0]), kv[0])))


def render_map(entries: Iterable[tuple[str, str]]) -> str:
    return "".join(f"{key} {value}\n" for key, value in entries)


# ---------------------------------------------------------------- haproxy.cfg


def render_config(snapshot: Snapshot, options: Options) -> str:
    sections = [
        _global(snapshot, options),
        _defaults(),
        _http_frontend(options, tls=False),
    ]
    if options.https_port is not None and options.cert_pem is not None:
        sections.append(_http_frontend(options, tls=True))
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
"""


def _defaults() -> str:
    return f"""\
defaults
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout queue 10s
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


def _http_frontend(options: Options, tls: bool) -> str:
    if tls:
        assert options.cert_pem is not None and options.https_port is not None
        bind = f"{options.bind}:{options.https_port} ssl crt {options.cert_pem} alpn h2,http/1.1"
        name, proto = "https", "https"
    else:
        bind, name, proto = f"{options.bind}:{options.http_port}", "http", "http"
    paths, hosts, wildcards = (options.map_path(n) for n in ("paths", "hosts", "wildcards"))
    return f"""\
frontend {name}
    mode http
    bind {bind}
    option idle-close-on-response
    option forwardfor
    http-request set-header X-Forwarded-Proto {proto}
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-header X-Request-Start t=%[date(0,ms)]
    http-request set-header X-Request-Id %[uuid] unless {{ req.hdr(x-request-id) -m found }}
    http-request set-var(txn.host) req.hdr(host),field(1,:),lower
    http-request set-var-fmt(txn.hostpath) %[var(txn.host)]%[path]
    http-request set-var(txn.backend) var(txn.hostpath),map_beg({paths})
    http-request set-var(txn.backend) var(txn.host),map_str({hosts}) unless {{ var(txn.backend) -m found }}
    http-request set-var(txn.backend) var(txn.host),map_end({wildcards}) unless {{ var(txn.backend) -m found }}
    use_backend %[var(txn.backend)] if {{ var(txn.backend) -m found }}
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
        lines.append("    retry-on conn-failure empty-response")
    lines.extend(f"    {server_line(addr)}" for addr in sorted(backend.servers))
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


def server_line(addr: str) -> str:
    """`server <name> <addr>`: the same arguments the Runtime API's `add server` gets, so both agree."""
    return f"server {server_name(addr)} {addr} {SERVER_ARGS}"
