"""The router (issue 5): throughput, latency, route-to-first-200 and concurrent keep-alive connections.

Everything runs in one process on the same backends: N backend ports on loopback, served by one HAProxy process
(`http-request return status 200 … string ok`, one thread) so that the backends cost as little as possible. Then:

1. throughput and latency with `wrk` (keep-alive, Host header), in interleaved rounds (A/B/C, B/C/A, C/A/B…:
   these machines are noisy; medians are reported) through
   (a) encom's router: a real `encom.router.router.Router` with one HTTP route to the N backends, started the way
       tests/integration/test_router.py starts it (Options, set_backends, set_routes),
   (b) hand-written HAProxy configs (same binary, same backends, `balance random`, the router's timeouts), from a
       minimal one to one doing the same job as encom's router, a feature more at each step (LADDER),
   (c) one backend directly;
2. time from `Router.add_route` being called to the first 200 through the router for a new domain, on a new
   backend (a reload) and on an existing backend (a map entry through the Runtime API), median of 10 each;
3. the most keep-alive connections held at once with 0 errors: open K, one request on each, keep them all open,
   one more request on each; K grows (1000, 2000, 5000, 10000…) until a step fails, then is bisected.
   The bench's own RLIMIT_NOFILE soft limit is raised to the hard limit first; HAProxy's maxconn and ulimit-n are
   read from `show info`.

Ports 8000-8999 only.

    uv run python -m bench.router [--duration 10] [--rounds 3]     (or: uv run python -m bench router …)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.net import wait_listening
from encom.api.types import Route, RouterLogEntry
from encom.router.access import (
    FLUSH_SECONDS,
    MAX_PENDING,
    AccessLog,
    open_fifo_for_haproxy,
)
from encom.router.config import (
    ACCESS_LOG_RULES,
    ACCESS_LOG_TARGET,
    QUEUE_TIMEOUT,
    Options,
    max_connections,
    request_headers,
)
from encom.router.haproxy import HAPROXY_BIN
from encom.router.router import Router

ROUTER_PORT = 8080
BACKEND_PORT_START = 8101
HOST = "bench.localhost"
SERVICE = "bench-web"
WRK_THREADS = 2
WRK_CONNECTIONS = 64
ROUTE_RUNS = 10
POLL_INTERVAL = 0.002
FIRST_200_TIMEOUT = 10.0
CONN_STEPS = (1000, 2000, 5000, 10000, 15000, 20000, 30000)
CONN_BISECT_STEPS = 10  # at most; the bisection stops within 0.5 % or CONN_PRECISION connections
CONN_PRECISION = 25
CONN_CONCURRENCY = 200  # connects in flight while opening the K connections
CONN_TIMEOUT = 5.0  # per connect or request
CONN_HOLD = 1.0  # seconds the K connections stay open, idle, between the two requests
FD_MARGIN = 64  # fds the bench keeps for itself
TARGET_RATIO = 0.95
TARGET_ROUTE_SECONDS = 0.2
TARGET_CONNECTIONS = 5000

# The router's defaults section (src/encom/router/config.py), for the hand-written config.
TIMEOUTS = f"""\
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout queue {QUEUE_TIMEOUT}
    timeout tunnel 1h
    timeout client-fin 10s
    timeout server-fin 10s
    timeout http-request 15s
    timeout http-keep-alive 15s
"""


class BenchError(RuntimeError):
    pass


# ---------------------------------------------------------------- processes


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def check_ports(ports: Sequence[int]) -> None:
    taken = [port for port in ports if not port_free(port)]
    if taken:
        raise BenchError(f"ports already in use: {taken}")


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (children inherit it); returns (soft, hard)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


@dataclass
class StaticHAProxy:
    """A HAProxy of our own in the foreground (`-db`), in its own session; stopped with its process group."""

    name: str
    config: str
    directory: Path
    port: int
    access_log: bool = False  # stdout to the FIFO `access_path`, as encom's router has it
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        return self.directory / f"{self.name}.sock"

    @property
    def access_path(self) -> Path:
        return self.directory / f"{self.name}-access.fifo"

    async def start(self) -> None:
        cfg = self.directory / f"{self.name}.cfg"
        cfg.write_text(self.config.replace("@SOCKET@", str(self.socket_path)))
        log = (self.directory / f"{self.name}.log").open("wb")
        stdout = open_fifo_for_haproxy(self.access_path) if self.access_log else log.fileno()
        try:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 (fork+exec only)
                [HAPROXY_BIN, "-db", "-f", str(cfg)],
                stdin=subprocess.DEVNULL, stdout=stdout, stderr=log, start_new_session=True,
            )  # fmt: skip
        finally:
            log.close()
            if self.access_log:
                os.close(stdout)
        try:
            await wait_listening(self.port, limit=10.0, poll=0.02)
        except BenchError:
            raise BenchError(f"{self.name} did not start:\n{self.log_tail()}") from None

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / f"{self.name}.log").read_text()[-2000:]
        return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def backends_config(ports: Sequence[int]) -> str:
    frontends = "".join(
        f"frontend backend_{port}\n    bind 127.0.0.1:{port}\n"
        "    http-request return status 200 content-type text/plain string ok\n"
        for port in ports
    )
    return f"global\n    nbthread 1\n    stats socket @SOCKET@ mode 600\ndefaults\n    mode http\n{TIMEOUTS}{frontends}"


@dataclass(frozen=True)
class Handwritten:
    """A hand-written HAProxy config for the bench's one app, with some of what encom's router does."""

    name: str
    label: str
    port: int
    routing: bool = False  # route by Host, 404 otherwise (encom: a map lookup)
    headers: bool = False  # X-Forwarded-For/Proto/Port, X-Request-Start, X-Request-Id
    access_log: bool = False  # an access line per request to HAProxy's stdout, a FIFO read by encom's own reader

    def config(self, backends: Sequence[int]) -> str:
        servers = "".join(f"    server s{i} 127.0.0.1:{p}\n" for i, p in enumerate(backends, 1))
        frontend = ""
        if self.headers:
            frontend += "    option idle-close-on-response\n" + request_headers("http")
        if self.access_log:
            frontend += ACCESS_LOG_RULES
        if self.routing:
            frontend += f"    use_backend app if {{ req.hdr(host),field(1,:),lower -m str {HOST} }}\n"
            frontend += "    default_backend not_found\nbackend not_found\n"
            frontend += '    http-request return status 404 content-type text/plain string "No such app"\n'
        else:
            frontend += "    default_backend app\n"
        return f"""\
global
    stats socket @SOCKET@ mode 600
{ACCESS_LOG_TARGET if self.access_log else ""}defaults
    mode http
{TIMEOUTS}    retries 3
    option redispatch 1
frontend http
    bind 127.0.0.1:{self.port}
{frontend}backend app
    balance random
{servers}"""


# From the least a config can do to what encom's router does, a feature at a time: what each one costs.
MINIMAL = Handwritten("handwritten", "hand-written minimal: `default_backend`, no headers, no access line", 8081)
ROUTING = Handwritten("routing", "+ Host routing (404 otherwise)", 8083, routing=True)
HEADERS_TOO = Handwritten("headers", "+ the request headers", 8084, routing=True, headers=True)
SAME_JOB = Handwritten(
    "samejob", "+ the access line = the same job as encom's router", 8082, routing=True, headers=True, access_log=True
)
LADDER = (MINIMAL, ROUTING, HEADERS_TOO, SAME_JOB)


_created = datetime(2026, 1, 1, tzinfo=UTC)


def http_route(domain: str, service: str) -> Route:
    global _created
    _created += timedelta(seconds=1)
    return Route(
        id=f"bench-{domain}", app_id="bench", type="http", domain=domain, path="/", service=service,
        created_at=_created, updated_at=_created,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def access_reader(path: Path, name: str, delivered: Counter[str]) -> AsyncIterator[None]:
    """encom's access-line reader on `path`, every line going to one job (counted, not sent anywhere)."""

    async def locate(server: str) -> tuple[str, str]:
        return "bench-job", "bench-host"

    async def deliver(url: str, job_id: str, entries: list[RouterLogEntry]) -> None:
        delivered[name] += len(entries)

    reader = asyncio.create_task(AccessLog(locate, deliver).run(path))
    try:
        yield
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


@contextlib.asynccontextmanager
async def running_router(directory: Path, backends: Sequence[str], delivered: Counter[str]) -> AsyncIterator[Router]:
    """A Router on ROUTER_PORT as the router role runs it (access lines on, read by encom's reader) with one
    HTTP route (HOST → SERVICE → the backends); closed at the end."""
    (directory / "router").mkdir()
    options = Options(dir=directory / "router", http_port=ROUTER_PORT, access_log=True)
    async with access_reader(options.access_pipe, "encom", delivered):
        router = Router(options)
        await router.start()
        try:
            await router.set_backends(SERVICE, backends)
            await router.set_routes([http_route(HOST, SERVICE)])
            yield router
        finally:
            await router.close()


async def show_info(sock: Path) -> dict[str, str]:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        writer.write(b"show info\n")
        await writer.drain()
        text = (await asyncio.wait_for(reader.read(), 5)).decode()
    finally:
        writer.close()
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


# ---------------------------------------------------------------- wrk


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50: float  # seconds
    p99: float
    errors: int  # socket errors + non-2xx answers


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise BenchError(f"unexpected wrk duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(out: str) -> WrkResult:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and p50 and p99):
        raise BenchError(f"cannot parse wrk's output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return WrkResult(float(rps.group(1)), parse_duration(p50.group(1)), parse_duration(p99.group(1)), errors)


def wrk_command(port: int, duration: float) -> list[str]:
    return [
        "wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{duration:g}s", "--latency",
        "-H", f"Host: {HOST}", f"http://127.0.0.1:{port}/",
    ]  # fmt: skip


async def wrk(port: int, duration: float) -> WrkResult:
    proc = await asyncio.create_subprocess_exec(
        *wrk_command(port, duration), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), duration + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"wrk exited {proc.returncode}:\n{out.decode(errors='replace')}")
    return parse_wrk(out.decode())


# ---------------------------------------------------------------- raw HTTP/1.1


def request(host: str) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


async def read_response(reader: asyncio.StreamReader) -> int:
    """The status of one response (its body read too, so that the connection can carry the next one)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status = int(head.split(" ", 2)[1])
    length = re.search(r"(?im)^content-length:\s*(\d+)", head)
    if length is None:
        raise BenchError(f"no Content-Length in {head!r}")
    await reader.readexactly(int(length.group(1)))
    return status


async def status_once(port: int, host: str) -> int | None:
    """The status of a request on a new connection; None if the connection failed."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        writer.write(request(host))
        return await asyncio.wait_for(read_response(reader), 2.0)
    except (OSError, asyncio.IncompleteReadError, TimeoutError, BenchError):
        return None
    finally:
        writer.close()


# ---------------------------------------------------------------- 1. throughput


@dataclass
class Throughput:
    runs: dict[str, list[WrkResult]] = field(default_factory=dict)

    def median(self, target: str, metric: Callable[[WrkResult], float]) -> float:
        return statistics.median(metric(r) for r in self.runs[target])

    def errors(self, target: str) -> int:
        return sum(r.errors for r in self.runs[target])


async def throughput(ports: dict[str, int], rounds: int, duration: float) -> Throughput:
    """Rounds A/B/C, B/C/A, C/A/B, … after a short warm-up of each."""
    names = list(ports)
    for name in names:
        await wrk(ports[name], min(2.0, duration))
    result = Throughput({name: [] for name in names})
    for i in range(rounds):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            run = await wrk(ports[name], duration)
            result.runs[name].append(run)
            print(
                f"  round {i + 1}/{rounds} {name:12} {run.rps:10.0f} req/s  p50 {run.p50 * 1e3:.2f} ms  "
                f"p99 {run.p99 * 1e3:.2f} ms  errors {run.errors}",
                file=sys.stderr,
                flush=True,
            )
    return result


# ---------------------------------------------------------------- 2. route → first 200


@dataclass(frozen=True)
class RouteTiming:
    returned: float  # add_route call → returned
    first_200: float  # add_route call → first 200 through the router
    reloads: int  # reloads the router did for it


async def first_200(port: int, host: str, started: float) -> float:
    while (elapsed := time.perf_counter() - started) < FIRST_200_TIMEOUT:
        if await status_once(port, host) == 200:
            return time.perf_counter() - started
        await asyncio.sleep(POLL_INTERVAL)
    raise BenchError(f"{host} did not answer 200 within {elapsed:.1f} s")


async def time_route(router: Router, route: Route) -> RouteTiming:
    assert route.domain is not None
    if await status_once(ROUTER_PORT, route.domain) != 404:
        raise BenchError(f"{route.domain} answers before its route exists")
    reloads = router.reloads
    started = time.perf_counter()
    await router.add_route(route)
    returned = time.perf_counter() - started
    took = await first_200(ROUTER_PORT, route.domain, started)
    return RouteTiming(returned, took, router.reloads - reloads)


async def route_timings(router: Router, backends: Sequence[str], runs: int) -> dict[str, list[RouteTiming]]:
    """Alternately: a new domain on a new service (new HAProxy backend: reload) and a new domain on SERVICE."""
    result: dict[str, list[RouteTiming]] = {"reload": [], "map": []}
    for i in range(runs):
        service = f"bench-new-{i}"
        await router.set_backends(service, [backends[i % len(backends)]])  # not routed yet: nothing applied
        result["reload"].append(await time_route(router, http_route(f"new{i}.{HOST}", service)))
        result["map"].append(await time_route(router, http_route(f"alias{i}.{HOST}", SERVICE)))
    return result


# ---------------------------------------------------------------- 3. concurrent keep-alive connections


@dataclass
class Hold:
    k: int
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.errors


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def guarded(step: Awaitable[int], errors: Counter[str], what: str) -> bool:
    try:
        status = await asyncio.wait_for(step, CONN_TIMEOUT)
    except (OSError, asyncio.IncompleteReadError, TimeoutError, BenchError) as exc:
        errors[f"{what}: {type(exc).__name__}"] += 1
        return False
    if status != 200:
        errors[f"{what}: HTTP {status}"] += 1
        return False
    return True


async def open_one(port: int, gate: asyncio.Semaphore, errors: Counter[str]) -> Conn | None:
    """Connect (at most CONN_CONCURRENCY connects at once) and send a request; the answer is awaited outside the
    gate so that connections HAProxy does not accept (beyond its maxconn) time out all at once."""
    async with gate:
        try:
            conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), CONN_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            errors[f"connect: {type(exc).__name__}"] += 1
            return None
        conn[1].write(request(HOST))
    if await guarded(read_response(conn[0]), errors, "request 1"):
        return conn
    conn[1].close()
    return None


async def again(conn: Conn, errors: Counter[str]) -> None:
    conn[1].write(request(HOST))
    await guarded(read_response(conn[0]), errors, "request 2")


async def hold(port: int, k: int) -> Hold:
    """K connections, a request on each, all kept open CONN_HOLD s, then one more request on each."""
    result = Hold(k)
    gate = asyncio.Semaphore(CONN_CONCURRENCY)
    started = time.perf_counter()
    opened = await asyncio.gather(*(open_one(port, gate, result.errors) for _ in range(k)))
    conns = [conn for conn in opened if conn is not None]
    try:
        await asyncio.sleep(CONN_HOLD)
        await asyncio.gather(*(again(conn, result.errors) for conn in conns))
    finally:
        for _, writer in conns:
            writer.close()
        await asyncio.sleep(0.5)  # let the server side see the closes before the next step
    result.seconds = time.perf_counter() - started
    return result


async def max_clean(port: int, limit: int) -> tuple[int, list[Hold]]:
    """The largest K held cleanly: CONN_STEPS up to `limit`, then a bisection between the last clean step and
    the first failed one (to within 0.5 %)."""
    tried: list[Hold] = []
    best, failed = 0, None
    for k in [k for k in CONN_STEPS if k <= limit] + ([limit] if limit not in CONN_STEPS else []):
        tried.append(await hold(port, k))
        print(f"    K={k}: {describe(tried[-1])}", file=sys.stderr, flush=True)
        if not tried[-1].clean:
            failed = k
            break
        best = k
    for _ in range(CONN_BISECT_STEPS if failed else 0):
        assert failed is not None
        if failed - best <= max(CONN_PRECISION, best // 200):
            break
        k = (best + failed) // 2
        tried.append(await hold(port, k))
        print(f"    K={k}: {describe(tried[-1])}", file=sys.stderr, flush=True)
        best, failed = (k, failed) if tried[-1].clean else (best, k)
    return best, tried


def describe(h: Hold) -> str:
    if h.clean:
        return f"clean ({h.seconds:.1f} s)"
    return ", ".join(f"{kind} x{n}" for kind, n in h.errors.most_common()) + f" ({h.seconds:.1f} s)"


# ---------------------------------------------------------------- the run


@dataclass
class Results:
    throughput: Throughput
    routes: dict[str, list[RouteTiming]]
    conns: dict[str, tuple[int, list[Hold]]]
    info: dict[str, dict[str, str]]  # target -> HAProxy's show info
    nofile: tuple[int, int]
    command: str
    access_lines: Counter[str]  # target -> access lines its reader got


@contextlib.contextmanager
def stopping(procs: list[StaticHAProxy]) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            proc.stop()


async def run(args: argparse.Namespace, directory: Path, command: str) -> Results:
    nofile = raise_nofile()
    backend_ports = [BACKEND_PORT_START + i for i in range(args.backends)]
    check_ports([ROUTER_PORT, *(h.port for h in LADDER), *backend_ports])
    addrs = [f"127.0.0.1:{p}" for p in backend_ports]
    backends = StaticHAProxy("backends", backends_config(backend_ports), directory, backend_ports[0])
    by_hand = {h.name: StaticHAProxy(h.name, h.config(backend_ports), directory, h.port, h.access_log) for h in LADDER}
    with stopping([backends, *by_hand.values()]):
        await backends.start()
        for port in backend_ports[1:]:
            await wait_listening(port, limit=10.0, poll=0.02)
        delivered: Counter[str] = Counter()
        async with (
            access_reader(by_hand[SAME_JOB.name].access_path, SAME_JOB.name, delivered),
            running_router(directory, addrs, delivered) as router,
        ):
            for proxy in by_hand.values():
                await proxy.start()
            ports = {"encom": ROUTER_PORT, "direct": backend_ports[0]} | {h.name: h.port for h in LADDER}
            for name, port in ports.items():
                if await status_once(port, HOST) != 200:
                    raise BenchError(f"{name} (port {port}) does not answer 200")
            print(f"throughput: {args.rounds} rounds of {args.duration:g} s per target", file=sys.stderr)
            tp = await throughput(ports, args.rounds, args.duration)
            print(f"route → first 200: {args.route_runs} runs per path", file=sys.stderr)
            routes = await route_timings(router, addrs, args.route_runs)
            sockets = {
                "encom": router.options.stats_socket,
                MINIMAL.name: by_hand[MINIMAL.name].socket_path,
                "direct": backends.socket_path,
            }
            info = {name: await show_info(sock) for name, sock in sockets.items()}
            limit = nofile[0] - FD_MARGIN
            conns: dict[str, tuple[int, list[Hold]]] = {}
            for name in sockets:
                print(f"keep-alive connections held, {name} (bench fd limit {nofile[0]})", file=sys.stderr)
                conns[name] = await max_clean(ports[name], limit)
    return Results(tp, routes, conns, info, nofile, command, delivered)


# ---------------------------------------------------------------- report


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}-{fmt(max(values))})"


def throughput_rows(tp: Throughput, rounds: int) -> list[list[str]]:
    targets = ("encom", MINIMAL.name, "direct", SAME_JOB.name)

    def row(label: str, metric: Callable[[WrkResult], float], fmt: Callable[[float], str], target: str) -> list[str]:
        values = [tp.median(t, metric) for t in targets]
        ratios = f"{values[0] / values[1]:.2f}x", f"{values[0] / values[3]:.2f}x"
        return [label, *(fmt(v) for v in values[:3]), ratios[0], fmt(values[3]), ratios[1], target]

    rps = row(f"req/s, median of {rounds}", lambda r: r.rps, lambda v: f"{v:,.0f}", f"≥ {TARGET_RATIO}x")
    return [
        rps,
        row("latency p50, median", lambda r: r.p50, ms, ""),
        row("latency p99, median", lambda r: r.p99, ms, ""),
        ["errors (socket + non-2xx), all rounds", *(str(tp.errors(t)) for t in targets[:3]), "",
         str(tp.errors(SAME_JOB.name)), "", "0"],
    ]  # fmt: skip


def ladder_rows(tp: Throughput) -> list[list[str]]:
    """Each hand-written config of the LADDER and encom's router: median req/s and p99, against the minimal."""
    base = tp.median(MINIMAL.name, lambda r: r.rps)
    rows = [["config", "req/s, median", "ratio to minimal", "latency p99, median"], ["---"] * 4]
    for name, label in [(h.name, h.label) for h in LADDER] + [("encom", "encom's router (the same job)")]:
        rps = tp.median(name, lambda r: r.rps)
        rows.append([label, f"{rps:,.0f}", f"{rps / base:.2f}x", ms(tp.median(name, lambda r: r.p99))])
    return rows


def route_rows(routes: dict[str, list[RouteTiming]]) -> list[list[str]]:
    labels = {
        "reload": "new domain, new backend (reload)",
        "map": "new domain, existing backend (map entry, no reload)",
    }
    rows = []
    for path, label in labels.items():
        timings = routes[path]
        first = spread([t.first_200 for t in timings], ms)
        ret = spread([t.returned for t in timings], ms)
        reloads = sum(t.reloads for t in timings)
        rows.append([f"{label}: `add_route` → first 200, median (min-max) of {len(timings)}", first, "", "", "",
                     "", "", f"≤ {TARGET_ROUTE_SECONDS} s"])  # fmt: skip
        rows.append([f"… of which `add_route` returning ({reloads} reloads in all)", ret, "", "", "", "", "", ""])
    return rows


def conn_rows(results: Results) -> list[list[str]]:
    targets = ("encom", MINIMAL.name, "direct")
    best = [str(results.conns[t][0]) for t in targets]
    info = [results.info[t] for t in targets]
    limits = [f"maxconn {i.get('Maxconn', '?')}, ulimit-n {i.get('Ulimit-n', '?')}" for i in info]
    encom, hand = results.conns["encom"][0], results.conns[MINIMAL.name][0]
    return [
        [
            "keep-alive connections held with 0 errors (2 requests each)",
            *best,
            f"{encom / max(hand, 1):.2f}x",
            "",
            "",
            f"≥ {TARGET_CONNECTIONS:,}",
        ],
        ["… HAProxy's limits (`show info`)", *limits, "", "", "", ""],
        ["… first failure", *(first_failure(results.conns[t][1]) for t in targets), "", "", "", ""],
    ]


def first_failure(tried: list[Hold]) -> str:
    failed = [h for h in tried if not h.clean]
    if not failed:
        return "none up to the bench's fd limit"
    h = min(failed, key=lambda h: h.k)
    kinds = ", ".join(f"{kind} x{n}" for kind, n in h.errors.most_common(3))
    return f"K={h.k}: {kinds}"


def report(results: Results, rounds: int, duration: float) -> str:
    header = [
        "metric", "encom", "hand-written HAProxy (minimal)", "direct", "ratio encom/minimal",
        "hand-written, same job", "ratio encom/same job", "target",
    ]  # fmt: skip
    rows = [
        header,
        ["---"] * len(header),
        *throughput_rows(results.throughput, rounds),
        *route_rows(results.routes),
        *conn_rows(results),
    ]
    soft, hard = results.nofile
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "What each feature costs (the hand-written configs, one feature more each, in the same rounds):", ""]
    lines += ["| " + " | ".join(row) + " |" for row in ladder_rows(results.throughput)]
    lines += [
        "",
        f"`{results.command}`; wrk: `{shlex.join(wrk_command(ROUTER_PORT, duration))}` (same on the other ports).",
        f"Bench process RLIMIT_NOFILE: soft {soft}, hard {hard}; the router's maxconn = max_connections() ="
        f" {max_connections(2, hard)} from the hard limit (about 2 fds per proxied connection).",
        "Backends: one HAProxy process (1 thread) with one `http-request return … string ok` frontend per port.",
        "Hand-written minimal: one frontend, `default_backend`, no headers, no access line. Hand-written same job:"
        " what encom's router does, written by hand for one app: Host routing with a 404 fallback (an ACL, where"
        " encom looks the host up in a map it can change without a reload), the same"
        " X-Forwarded-*/X-Request-Id/X-Request-Start headers and the same access line per request to HAProxy's"
        " stdout, a FIFO read by encom's own reader as the router role reads it. All have the router's timeouts"
        " and retries (`retries 3`, `option redispatch 1`: a refused connection is retried on another server).",
        f"Access lines read during the run (the reader keeps at most {MAX_PENDING:,} per"
        f" {FLUSH_SECONDS:g} s and drops the rest): encom {results.access_lines['encom']:,},"
        f" same job {results.access_lines[SAME_JOB.name]:,}.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved wrk rounds per target (default 3)")
    parser.add_argument("--route-runs", type=int, default=ROUTE_RUNS, help="route additions per path (default 10)")
    parser.add_argument("--backends", type=int, default=3, help="backend ports (default 3)")
    return parser.parse_args(argv)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM cleans up like Ctrl-C: every HAProxy and backend started is stopped


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    command = shlex.join(["uv", "run", "python", "-m", "bench.router", *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory(prefix="encom-bench-router-") as tmp:
        results = asyncio.run(run(args, Path(tmp), command))
    print(report(results, args.rounds, args.duration))


if __name__ == "__main__":
    main()
