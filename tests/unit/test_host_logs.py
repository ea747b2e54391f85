"""Turning raw container output into log lines."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from encom.api.types import LogLine, utcnow
from encom.host.logs import JobLog, LineSplitter, Tailer


def test_complete_lines_only_until_flushed() -> None:
    s = LineSplitter()
    assert s.feed(b"one\ntw") == ["one"]
    assert s.feed(b"o\r\nthree") == ["two"]
    assert s.flush() == ["three"]
    assert s.flush() == []


def test_long_lines_are_split() -> None:
    s = LineSplitter(max_bytes=4)
    assert s.feed(b"abcdefghij\n") == ["abcd", "efgh", "ij"]
    assert s.feed(b"abcd\n") == ["abcd"]


def test_split_keeps_utf8_characters_whole() -> None:
    s = LineSplitter(max_bytes=4)
    assert s.feed("abcé".encode() + b"\n") == ["abc", "é"]


def test_invalid_utf8_is_replaced() -> None:
    assert LineSplitter().feed(b"a\xff\xfeb\n") == ["a\ufffd\ufffdb"]


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def template() -> LogLine:
    return LogLine(timestamp=utcnow(), app_id="a", job_id="j", process_type="web", dyno="web.1", msg="")


def test_tailer_writes_jsonl_and_resumes_from_saved_offsets(tmp_path: Path) -> None:
    job_log = JobLog(tmp_path)
    (tmp_path / "stdout.raw").write_bytes(b"out 1\nout")
    (tmp_path / "stderr.raw").write_bytes(b"err 1\n")
    Tailer(tmp_path, template(), job_log).poll()
    assert [(line.stream, line.msg) for line in job_log.tail(10)] == [("stdout", "out 1"), ("stderr", "err 1")]

    append(tmp_path / "stdout.raw", b" 2\n")
    again = Tailer(tmp_path, template(), job_log)  # a new encomd: offsets come from tail.json
    again.poll()
    again.poll(final=True)
    assert [line.msg for line in job_log.tail(10)] == ["out 1", "err 1", " 2"]
    assert [line.msg for line in job_log.tail(1)] == [" 2"]


async def test_follow_ends_after_the_writer_is_drained(tmp_path: Path) -> None:
    job_log = JobLog(tmp_path)
    tailer = Tailer(tmp_path, template(), job_log)
    stopped = asyncio.Event()
    running = asyncio.create_task(tailer.run(stopped))
    (tmp_path / "stdout.raw").write_bytes(b"before\n")
    await asyncio.wait_for(_until(lambda: bool(job_log.tail(1))), 5)

    async def follow() -> list[str]:
        return [line.msg async for line in job_log.follow(5, tailer.drained.is_set)]

    following = asyncio.create_task(follow())
    append(tmp_path / "stdout.raw", b"after\nlast")
    stopped.set()
    assert await asyncio.wait_for(following, 5) == ["before", "after", "last"]
    await running


async def _until(condition: Callable[[], bool]) -> None:
    while True:
        if condition():
            return
        await asyncio.sleep(0.01)
