"""HAProxy's access lines (ACCESS_LOG_FORMAT) read from the FIFO as Heroku-style router log entries."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from encom.api.types import RouterLogEntry
from encom.router import access
from encom.router.access import AccessLog, open_fifo_for_haproxy, parse

REQUEST_ID = "5f1c1f7e-3a47-4d0b-9d5b-0e7b7f1b2c3d"


def test_a_served_request_names_its_server() -> None:
    found = parse(f'127.0.0.1:55001 GET 200 12 1534 {REQUEST_ID} "/search?q=a b"\n')
    assert found is not None
    assert found.server == "127.0.0.1:55001"
    assert found.entry.msg == (
        f'method=GET path="/search?q=a b" status=200 service=12ms bytes=1534 request_id={REQUEST_ID}'
    )


def test_a_line_cut_in_its_uri_keeps_the_rest() -> None:
    found = parse(f'127.0.0.1:55001 GET 414 3 0 {REQUEST_ID} "/{"a" * 50}')
    assert found is not None
    assert f'path="/{"a" * 50}" status=414' in found.entry.msg


def test_lines_without_a_server_or_garbage_are_dropped() -> None:
    assert parse('-:- GET 404 0 120 abc "/"') is None  # answered by HAProxy itself (no such app)
    assert parse('<NOSRV>:0 GET 503 0 120 abc "/"') is None
    assert parse("") is None
    assert parse("not an access line") is None
    assert parse('127.0.0.1:x GET 200 1 2 id "/"') is None
    assert parse("127.0.0.1:1 GET 200 1 2 id /unquoted") is None


def test_the_fifo_holds_a_megabyte_and_never_blocks_its_writer(tmp_path: Path) -> None:
    fd = open_fifo_for_haproxy(tmp_path / "access.fifo")
    try:
        written = 0
        with contextlib.suppress(BlockingIOError):
            while written < 4 << 20:
                written += os.write(fd, b"x" * 4000 + b"\n")
        assert access.PIPE_BYTES * 0.9 <= written < 4 << 20  # pages are not filled to the last byte
    finally:
        os.close(fd)


async def test_lines_are_read_whole_and_delivered_per_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access, "MAX_PENDING", 5)
    monkeypatch.setattr(access, "READ_SECONDS", 0.02)
    monkeypatch.setattr(access, "FLUSH_SECONDS", 0.05)
    delivered: dict[str, list[str]] = {}
    got = asyncio.Event()

    async def locate(server: str) -> tuple[str, str] | None:
        return None if server.endswith(":9") else (f"job-{server.rsplit(':')[1]}", "http://host")

    async def deliver(url: str, job_id: str, entries: list[RouterLogEntry]) -> None:
        delivered.setdefault(job_id, []).extend(e.msg.split()[1] for e in entries)
        got.set()

    path = tmp_path / "access.fifo"
    writer = open_fifo_for_haproxy(path)  # as HAProxy's stdout
    reader = asyncio.create_task(AccessLog(locate, deliver).run(path))
    try:
        lines = [f'127.0.0.1:{port} GET 200 1 2 id "/{n}"\n' for n, port in enumerate([1, 2, 1, 9, 1, 2, 1])]
        data = "".join(lines).encode()
        os.write(writer, data[:30])  # a line's start in one flush, its end in the next
        await asyncio.sleep(0.2)
        assert delivered == {}
        os.write(writer, data[30:])
        await asyncio.wait_for(got.wait(), 5)
        await asyncio.sleep(0.2)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        os.close(writer)
    # the first five are kept (the rest dropped), the one of an unknown server goes nowhere
    assert delivered == {"job-1": ['path="/0"', 'path="/2"', 'path="/4"'], "job-2": ['path="/1"']}


def test_dropped_lines_are_reported_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    async def nowhere(*args: object) -> None:
        return None

    reader = AccessLog(nowhere, nowhere)
    with caplog.at_level("WARNING", logger="encom.router.access"):
        reader.report_dropped()  # nothing dropped
        reader.dropped = 7
        reader.report_dropped()
        reader.dropped = 9
        reader.report_dropped()  # within the minute
    assert [r.getMessage() for r in caplog.records] == ["7 router access lines dropped (over 10000 a second)"]
