"""Log drains: the RFC 5424 messages, their framing (RFC 6587 octet counting; Heroku's logplex bodies), URL checks,
and a Shipper delivering over a real TCP socket through an outage."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from encom.api.errors import ValidationError
from encom.api.settings import Settings
from encom.api.types import LogLine
from encom.controller import drains
from encom.controller.drains import DrainTarget, Shipper, SyslogStream, check_url, logplex_body, octet_frame, rfc5424
from tests.integration.roles import free_port
from tests.unit.test_routes_tls import tls_pair

PORTS = (11000, 11099)  # this file's listeners (integration tests use 11100-11199, e2e 11200-11999)
T0 = datetime(2026, 11, 24, 19, 0, 0, 123456, tzinfo=UTC)
RFC5424 = re.compile(r"^<(\d+)>1 (\S+) (\S+) (\S+) (\S+) - - (.*)$", re.S)


def line(msg: str, **kwargs: object) -> LogLine:
    fields: dict[str, object] = {"timestamp": T0, "app_id": "a1", "job_id": "j1", "process_type": "web"}
    fields.update(dyno="web.1", msg=msg)
    fields.update(kwargs)
    return LogLine.model_validate(fields)


# ---------------------------------------------------------------- messages


def test_an_app_stdout_line_is_user_info_with_herokus_fields() -> None:
    message = rfc5424(line("GET / 200"), "example")
    assert message == b"<14>1 2026-11-24T19:00:00.123456Z example app web.1 - - GET / 200"


def test_stderr_is_severity_err() -> None:
    assert rfc5424(line("boom", stream="stderr"), "example").startswith(b"<11>1 ")


def test_router_and_encom_lines_name_their_source_and_dyno_as_encom_log_does() -> None:
    for source in ("router", "encom"):
        entry = line("State changed from starting to up", source=source)
        match = RFC5424.match(rfc5424(entry, "example").decode())
        assert match is not None
        assert match.group(4, 5) == (source, "web.1")
        assert entry.format().split(" ", 1)[1].startswith(f"{source}[web.1]: ")


def test_a_one_off_job_is_procid_run_and_the_timestamp_matches_encom_log() -> None:
    entry = line("hello", process_type="", dyno="")
    match = RFC5424.match(rfc5424(entry, "example").decode())
    assert match is not None
    assert match.group(5) == "run"
    assert match.group(2) == entry.format().split(" ", 1)[0]


def test_header_fields_are_printable_ascii_and_bounded_the_message_is_utf8_as_is() -> None:
    entry = line("héllo wörld  two spaces", dyno="we b.1", source="app")
    message = rfc5424(entry, "x" * 300).decode()
    match = RFC5424.match(message)
    assert match is not None
    assert match.group(3) == "x" * 255
    assert match.group(5) == "we_b.1"
    assert match.group(6) == "héllo wörld  two spaces"


def test_octet_counting_counts_bytes_not_characters() -> None:
    message = rfc5424(line("é"), "app")
    assert octet_frame(message) == str(len(message)).encode() + b" " + message
    assert octet_frame("é".encode()) == b"2 \xc3\xa9"


def test_a_logplex_body_is_octet_counted_with_one_message_per_line() -> None:
    messages = [rfc5424(line("one"), "app"), rfc5424(line("two", stream="stderr"), "app")]
    body = logplex_body(messages)
    assert body.decode().splitlines() == [f"{len(m) + 1} {m.decode()}" for m in messages]
    assert parse_frames(body) == [m + b"\n" for m in messages]


def parse_frames(data: bytes) -> list[bytes]:
    """RFC 6587 octet-counted frames, as a receiver reads them."""
    frames = []
    while data:
        length, _, rest = data.partition(b" ")
        frames.append(rest[: int(length)])
        data = rest[int(length) :]
    return frames


# ---------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://logs.example.com:21", 'unsupported drain URL scheme "ftp": use syslog+tcp://, syslog+tls://, https://'),
        ("logs.example.com:514", "invalid drain URL: expected scheme://host:port"),
        ("syslog+tcp://:514", "drain URL has no host: expected syslog+tcp://host:port"),
        ("syslog+tcp://logs.example.com", "drain URL has no port: expected syslog+tcp://host:port"),
        ("syslog+tcp://logs.example.com:99999", "drain URL has an invalid port"),
        ("https://user:s3cret@:443/x", "drain URL has no host"),
    ],
)
def test_bad_urls_are_refused_naming_the_problem(url: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        check_url(url)
    assert message in info.value.message
    assert "s3cret" not in info.value.message


def test_good_urls_pass_and_https_needs_no_port() -> None:
    for url in (
        "syslog+tcp://127.0.0.1:514",
        "syslog+tls://logs.example.com:6514",
        "https://u:p@h.example/x",
        "http://h",
    ):
        check_url(url)


def test_redact_hides_credentials_only() -> None:
    assert drains.redact("https://user:s3cret@logs.example.com/x?y=1") == "https://***@logs.example.com/x?y=1"
    assert drains.redact("https://logs.example.com/x") == "https://logs.example.com/x"
    assert drains.redact("syslog+tcp://h:514") == "syslog+tcp://h:514"


# ---------------------------------------------------------------- a shipper over a real socket


class Receiver:
    """A TCP syslog receiver: collects octet-counted frames."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.arrived = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            while True:
                length = await reader.readuntil(b" ")
                self.frames.append(await reader.readexactly(int(length[:-1])))
                self.arrived.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def wait_for(self, count: int, seconds: float = 10.0) -> list[bytes]:
        async def enough() -> None:
            while len(self.frames) < count:
                self.arrived.clear()
                await self.arrived.wait()

        try:
            await asyncio.wait_for(enough(), seconds)
        except TimeoutError:
            pytest.fail(f"only {len(self.frames)} of {count} frames arrived within {seconds:.0f}s")
        return self.frames


@asynccontextmanager
async def receiving(port: int, tls: ssl.SSLContext | None = None) -> AsyncIterator[Receiver]:
    receiver = Receiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", port, ssl=tls)
    try:
        yield receiver
    finally:
        server.close()
        for writer in receiver.writers:
            writer.close()
        await server.wait_closed()


def shipper_to(port: int) -> Shipper:
    target = DrainTarget("d1", "a1", "example", f"syslog+tcp://127.0.0.1:{port}", "d.t", T0)
    return Shipper(Settings(data_dir=Path("/nonexistent")), target, SyslogStream("127.0.0.1", port))


async def test_lines_reach_a_syslog_receiver_in_order_and_move_the_cursor() -> None:
    port = free_port(*PORTS)
    shipper = shipper_to(port)
    async with receiving(port) as receiver:
        delivering = asyncio.create_task(shipper.deliver())
        try:
            for i in range(3):
                shipper.add(line(f"line {i}", timestamp=T0 + timedelta(seconds=i + 1)))
            frames = await receiver.wait_for(3)
        finally:
            delivering.cancel()
            await shipper.transport.close()
    assert [f.decode().rsplit(" ", 2)[1:] for f in frames] == [["line", str(i)] for i in range(3)]
    assert all(RFC5424.match(f.decode()) for f in frames)
    await wait_until(lambda: not shipper.buffer, "the buffer to empty")
    assert shipper.cursor == T0 + timedelta(seconds=3)


async def test_a_down_receiver_buffers_drops_the_oldest_beyond_the_limit_and_gets_the_rest_when_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(drains, "MAX_BUFFER", 5)
    port = free_port(*PORTS)
    shipper = shipper_to(port)
    delivering = asyncio.create_task(shipper.deliver())
    try:
        for i in range(8):
            shipper.add(line(f"line {i}", timestamp=T0 + timedelta(seconds=i + 1)))
        await wait_until(lambda: shipper.down, "the first failed delivery")
        assert shipper.dropped == 3 and len(shipper.buffer) == 5
        async with receiving(port) as receiver:
            frames = await receiver.wait_for(5, seconds=5)
        assert [f.decode().rsplit(" ", 1)[1] for f in frames] == ["3", "4", "5", "6", "7"]
        assert not shipper.down and shipper.dropped == 0
    finally:
        delivering.cancel()
        await shipper.transport.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("is down" in w for w in warnings) == 1, warnings
    assert sum("dropping the oldest" in w for w in warnings) == 1, warnings
    assert any("3 lines were dropped" in w for w in warnings), warnings


async def wait_until(check: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {seconds:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_syslog_over_tls_checks_the_receivers_certificate(tmp_path: Path) -> None:
    cert, key = tls_pair("localhost")
    (tmp_path / "cert.pem").write_text(cert)
    (tmp_path / "key.pem").write_text(key)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    port = free_port(*PORTS)
    message = rfc5424(line("over tls"), "example")
    async with receiving(port, server_side) as receiver:
        untrusted = drains.transport_for(f"syslog+tls://localhost:{port}", "d.t")  # the system's CAs only
        with pytest.raises(ssl.SSLCertVerificationError):
            await untrusted.send([message])
        await untrusted.close()
        trusted = SyslogStream("localhost", port, ssl.create_default_context(cadata=cert))
        await trusted.send([message])
        assert await receiver.wait_for(1) == [message]
        await trusted.close()
