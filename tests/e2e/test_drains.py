"""`encom drain` as a Heroku user expects it: a syslog receiver and an HTTP endpoint get the lines `encom log`
shows (RFC 5424; octet-counted over TCP, logplex batches over HTTP); a dead drain slows nothing and gets its
lines when it is back.

Tests run in file order on one app of the session's cluster, with its own user. Receivers listen on 11000-11999.
"""

from __future__ import annotations

import base64
import http.client
import re
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.conftest import Cluster, User, cluster_user, curl, wait_for
from tests.integration.roles import free_port

pytestmark = pytest.mark.e2e

APP = "drains"
HOST = f"{APP}.encom.localhost"
PROCFILE = "web: exec python3 -m http.server $PORT\n"  # logs each request to stderr
PORTS = (11200, 11999)
FRAME = re.compile(r"^<(\d+)>1 (\S+) (\S+) (\S+) (\S+) - - (.*)$", re.S)
LOG_LINE = re.compile(r"^(\S+) (app|router|encom)\[([\w.]+)\]: (.*)$")
ADDED = re.compile(r"^Drain (\S+) added for (\S+)\nToken: (d\.[0-9a-f-]{36})\n$")
Entry = tuple[str, str, str, str]  # time, source, dyno, message


@pytest.fixture(scope="module")
def owner(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> User:
    return cluster_user(cluster, tmp_path_factory.mktemp("drains-home"))


@pytest.fixture(scope="module")
def repo(owner: User, cluster: Cluster) -> Path:
    repo = owner.procfile_repo(APP, PROCFILE, "a web")
    owner.encom("create", APP, cwd=repo)
    owner.ok("git", "push", "encom", "master", cwd=repo, timeout=300)
    wait_for("the app to answer", lambda: curl(cluster.router_port, HOST)[0] == 200, timeout=30)
    return repo


# ---------------------------------------------------------------- receivers


def parse_frame(frame: str) -> tuple[int, str, Entry]:
    """(PRI, HOSTNAME, (time, source, dyno, message)) of an RFC 5424 message as encom sends it."""
    match = FRAME.match(frame)
    assert match, f"not RFC 5424 as encom sends it: {frame!r}"
    pri, ts, host, source, dyno, msg = match.groups()
    return int(pri), host, (ts, source, dyno, msg)


@dataclass
class Received:
    frames: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, frame: str) -> None:
        with self.lock:
            self.frames.append(frame)

    def entries(self) -> list[Entry]:
        with self.lock:
            return [parse_frame(frame)[2] for frame in self.frames]

    def having(self, text: str) -> list[Entry]:
        return [entry for entry in self.entries() if text in entry[3]]


class SyslogListener:
    """A TCP syslog receiver (RFC 6587 octet counting) on a thread."""

    def __init__(self, port: int) -> None:
        self.received = Received()
        self.server = socket.create_server(("127.0.0.1", port))
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        data = b""
        with conn:
            while chunk := _recv(conn):
                data += chunk
                while b" " in data:
                    length, _, rest = data.partition(b" ")
                    if len(rest) < int(length):
                        break
                    self.received.add(rest[: int(length)].decode())
                    data = rest[int(length) :]

    def close(self) -> None:
        self.server.close()
        for conn in self.connections:
            conn.close()


def _recv(conn: socket.socket) -> bytes:
    try:
        return conn.recv(65536)
    except OSError:
        return b""


@contextmanager
def syslog_listener(port: int) -> Iterator[Received]:
    listener = SyslogListener(port)
    try:
        yield listener.received
    finally:
        listener.close()


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes


def posting_handler(posts: list[Post]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            posts.append(Post(self.path, dict(self.headers.items()), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def http_listener(port: int) -> Iterator[list[Post]]:
    posts: list[Post] = []
    server = ThreadingHTTPServer(("127.0.0.1", port), posting_handler(posts))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield posts
    finally:
        server.shutdown()
        server.server_close()


def logplex_frames(body: bytes) -> list[str]:
    frames = []
    while body:
        length, _, rest = body.partition(b" ")
        frame = rest[: int(length)]
        assert frame.endswith(b"\n"), frame
        frames.append(frame[:-1].decode())
        body = rest[int(length) :]
    return frames


# ---------------------------------------------------------------- helpers


def log_entries(owner: User, repo: Path) -> list[Entry]:
    entries = []
    for text in owner.encom("log", "-n", "10000", cwd=repo).out.splitlines():
        match = LOG_LINE.match(text)
        assert match, text
        ts, source, dyno, msg = match.groups()
        entries.append((ts, source, dyno, msg))
    return entries


def add_drain(owner: User, repo: Path, url: str) -> tuple[str, str]:
    """`encom drain add`: (id, token)."""
    out = owner.encom("drain", "add", url, cwd=repo).out
    match = ADDED.match(out)
    assert match and match.group(2) == url, out
    return match.group(1), match.group(3)


def eventually(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    wait_for(what, check, timeout=timeout, interval=0.1)


def request(port: int, path: str) -> float:
    """One GET through the router; its latency in seconds."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers={"Host": HOST})
        response = conn.getresponse()
        response.read()
        assert response.status in (200, 404), response.status
    finally:
        conn.close()
    return time.monotonic() - started


# ---------------------------------------------------------------- tests


def test_a_syslog_drain_gets_exactly_what_encom_log_shows(owner: User, repo: Path, cluster: Cluster) -> None:
    port = free_port(*PORTS)
    marker = uuid.uuid4().hex[:12]
    url = f"syslog+tcp://127.0.0.1:{port}"
    with syslog_listener(port) as received:
        drain_id, token = add_drain(owner, repo, url)
        listed = owner.encom("drain", cwd=repo).out.splitlines()
        assert listed[0].split() == ["ID", "URL", "TOKEN", "CREATED"], listed
        assert listed[1].split()[:3] == [drain_id, url, token], listed
        owner.encom("run", "-d", "sh", "-c", f"echo out-{marker}; echo err-{marker} >&2", cwd=repo)
        assert curl(cluster.router_port, HOST, f"/web-{marker}")[0] == 404  # http.server: no such file
        for text in (f"out-{marker}", f"err-{marker}", f'path="/web-{marker}"', f"GET /web-{marker}"):
            eventually(f"{text} at the syslog receiver", lambda t=text: bool(received.having(t)))  # type: ignore[misc]

        def same_as_the_log() -> bool:
            drained = received.entries()
            low, high = min(e[0] for e in drained), max(e[0] for e in drained)
            return sorted(drained) == sorted(e for e in log_entries(owner, repo) if low <= e[0] <= high)

        eventually("the drained lines to be exactly the log's lines of that time", same_as_the_log, timeout=10)
        frames = [parse_frame(frame) for frame in received.frames]
    by_message = {entry[3]: (pri, host, entry) for pri, host, entry in frames}
    assert all(host == APP for _, host, _ in frames), frames
    assert by_message[f"out-{marker}"][0] == 14 and by_message[f"err-{marker}"][0] == 11, by_message
    source, dyno = by_message[f"out-{marker}"][2][1:3]
    assert source == "app" and re.match(r"^run\.\d+$", dyno), by_message
    [router] = [entry for _, _, entry in frames if f'path="/web-{marker}"' in entry[3]]
    assert router[1:3] == ("router", "web.1"), router
    raw = owner.encom("log", "--raw", "-n", "10000", cwd=repo).out.splitlines()
    assert all(entry[3] in raw for _, _, entry in frames)
    assert owner.encom("drain", "remove", drain_id, cwd=repo).out == f"Drain {drain_id} removed\n"
    assert owner.encom("drain", cwd=repo).out.splitlines()[1:] == []


def test_an_http_drain_gets_logplex_batches_with_herokus_headers(owner: User, repo: Path, cluster: Cluster) -> None:
    port = free_port(*PORTS)
    marker = uuid.uuid4().hex[:12]
    url = f"http://user:s3cret@127.0.0.1:{port}/logs"
    count = 1200
    with http_listener(port) as posts:
        drain_id, token = add_drain(owner, repo, url)
        assert url in owner.encom("drain", cwd=repo).out, "the owner sees the URL as given"
        owner.encom("run", "-d", "sh", "-c", f"for i in $(seq 1 {count}); do echo burst-{marker} $i; done", cwd=repo)

        def burst() -> list[str]:
            messages = [parse_frame(frame)[2][3] for post in list(posts) for frame in logplex_frames(post.body)]
            return [message for message in messages if message.startswith(f"burst-{marker} ")]

        eventually(f"{count} burst lines at the HTTP receiver", lambda: len(burst()) >= count)
        numbers = [int(message.split()[1]) for message in burst()]
        assert numbers == list(range(1, count + 1))
        snapshot = list(posts)
    auth = "Basic " + base64.b64encode(b"user:s3cret").decode()
    for post in snapshot:
        frames = logplex_frames(post.body)
        assert post.path == "/logs"
        assert post.headers["Content-Type"] == "application/logplex-1"
        assert post.headers["Logplex-Drain-Token"] == token
        assert int(post.headers["Logplex-Msg-Count"]) == len(frames) <= 500
        assert post.headers["Authorization"] == auth
        assert all(parse_frame(frame)[1] == APP for frame in frames)
    assert sum(1 for post in snapshot if f"burst-{marker}".encode() in post.body) >= 3, "1200 lines in 500-line batches"
    assert owner.encom("drain", "remove", url, cwd=repo).out == f"Drain {drain_id} removed\n"
    encomd_log = cluster.log.read_text(errors="replace")
    assert "s3cret" not in encomd_log and f"{port}/logs" not in encomd_log, "the controller logged the drain's URL"


def test_a_dead_drain_slows_nothing_and_gets_its_lines_when_back(owner: User, repo: Path, cluster: Cluster) -> None:
    port = free_port(*PORTS)  # nobody listens there yet
    marker = uuid.uuid4().hex[:12]
    before = [request(cluster.router_port, "/") for _ in range(20)]
    drain_id, _ = add_drain(owner, repo, f"syslog+tcp://127.0.0.1:{port}")
    paths = [f"/dead-{marker}-{i}" for i in range(40)]
    after = [request(cluster.router_port, path) for path in paths]
    slow, dead = statistics.median(before) * 1000, statistics.median(after) * 1000
    print(f"router latency: {slow:.1f} ms before, {dead:.1f} ms with a dead drain")
    assert statistics.median(after) < statistics.median(before) + 0.05 and max(after) < 1.0, (before, after)

    missing: list[str] = []

    def in_the_log() -> bool:
        raw = owner.encom("log", "--raw", "-n", "10000", cwd=repo).out
        missing[:] = [path for path in paths if f'path="{path}"' not in raw]
        return not missing

    try:
        eventually("every request's router line in encom log", in_the_log, timeout=15)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {len(missing)} of {len(paths)} missing, e.g. {missing[:3]}") from None
    with syslog_listener(port) as received:
        eventually(
            "the buffered lines at the receiver once it is back",
            lambda: all(received.having(f'path="{path}"') for path in paths),
            timeout=25,
        )
    assert owner.encom("drain", "remove", drain_id, cwd=repo).out == f"Drain {drain_id} removed\n"


def test_bad_drains_are_refused_clearly(owner: User, repo: Path) -> None:
    scheme = owner.fails("encom", "drain", "add", "ftp://logs.example.com:21", cwd=repo)
    assert 'error: unsupported drain URL scheme "ftp": use syslog+tcp://' in scheme.err, scheme.err
    port = owner.fails("encom", "drain", "add", "syslog+tcp://logs.example.com", cwd=repo)
    assert "error: drain URL has no port: expected syslog+tcp://host:port" in port.err, port.err
    owner.encom("drain", "add", "syslog+tcp://logs.example.com:514", cwd=repo)
    assert (
        "error: drain already exists"
        in owner.fails("encom", "drain", "add", "syslog+tcp://logs.example.com:514", cwd=repo).err
    )
    assert "not found" in owner.fails("encom", "drain", "remove", "no-such-drain", cwd=repo).err
    owner.encom("drain", "remove", "syslog+tcp://logs.example.com:514", cwd=repo)
    assert "logs.example.com" not in owner.encom("drain", cwd=repo).out
    assert "Traceback" not in scheme.err + port.err
