"""HAProxy's access lines (ACCESS_LOG_FORMAT) read as Heroku-style router log entries."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import pytest

from encom.api.types import RouterLogEntry
from encom.router import access
from encom.router.access import AccessLog, parse


def test_a_served_request_names_its_server() -> None:
    found = parse('127.0.0.1:55001 GET "/search?q=a b" 200 12 1534 5f1c1f7e-3a47-4d0b-9d5b-0e7b7f1b2c3d\n')
    assert found is not None
    assert found.server == "127.0.0.1:55001"
    assert found.entry.msg == (
        'method=GET path="/search?q=a b" status=200 service=12ms bytes=1534 '
        "request_id=5f1c1f7e-3a47-4d0b-9d5b-0e7b7f1b2c3d"
    )


def test_lines_without_a_server_or_garbage_are_dropped() -> None:
    assert parse('-:- GET "/" 404 0 120 abc') is None  # answered by HAProxy itself (no such app)
    assert parse('<NOSRV>:0 GET "/" 503 0 120 abc') is None
    assert parse("") is None
    assert parse("not an access line") is None
    assert parse('127.0.0.1:x GET "/" 200 1 2 id') is None


async def test_lines_are_read_apart_and_delivered_per_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access, "MAX_PENDING", 5)
    delivered: dict[str, list[str]] = {}
    got = asyncio.Event()

    async def locate(server: str) -> tuple[str, str] | None:
        return None if server.endswith(":9") else (f"job-{server.rsplit(':')[1]}", "http://host")

    async def deliver(url: str, job_id: str, entries: list[RouterLogEntry]) -> None:
        delivered[job_id] = [e.msg.split()[1] for e in entries]
        got.set()

    path = tmp_path / "access.sock"
    reader = asyncio.create_task(AccessLog(locate, deliver).run(path))
    await asyncio.sleep(0)  # the reader binds its socket before its first await
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        lines = [f'127.0.0.1:{port} GET "/{n}" 200 1 2 id' for n, port in enumerate([1, 2, 1, 9, 1, 2, 1])]
        for line in lines:
            sender.sendto(line.encode(), str(path))
    await asyncio.wait_for(got.wait(), 5)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    # the first five are kept (the rest dropped), the one of an unknown server goes nowhere
    assert delivered == {"job-1": ['path="/0"', 'path="/2"', 'path="/4"'], "job-2": ['path="/1"']}
