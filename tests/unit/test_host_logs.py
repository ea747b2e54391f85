"""Turning raw container output into log lines."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest

from encom.api.types import LogLine, utcnow
from encom.host import logs
from encom.host.logs import JobLog, Kept, LineSplitter, Tailer, logs_to_drop


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


def lines(job_log: JobLog, texts: list[str]) -> None:
    now = utcnow()
    job_log.append([template().model_copy(update={"timestamp": now, "msg": t}) for t in texts])


def test_a_job_keeps_its_last_lines_in_two_generations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "LOG_ROTATE_LINES", 10)
    job_log = JobLog(tmp_path)
    for i in range(0, 25, 5):
        lines(job_log, [str(n) for n in range(i, i + 5)])
    # 25 lines: two rotations at 10 lines; the current generation holds 20-24, the old one 10-19
    assert [line.msg for line in job_log.tail(100)] == [str(n) for n in range(10, 25)]
    assert job_log.line_count() == 15
    assert JobLog(tmp_path).line_count() == 15  # counted from the files by a new encomd
    assert job_log.disk_bytes() == (tmp_path / "log.jsonl").stat().st_size + (tmp_path / "log.1.jsonl").stat().st_size


async def test_a_follower_loses_no_line_to_a_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "LOG_ROTATE_LINES", 4)
    job_log = JobLog(tmp_path)
    lines(job_log, ["old"])
    done = False
    following = asyncio.create_task(_collect(job_log.follow(0, lambda: done)))
    await asyncio.sleep(0.05)  # the follower has its cursor at the end of "old"
    lines(job_log, ["1", "2", "3"])  # the 4th line: rotated before the follower read them
    lines(job_log, ["4", "5"])
    done = True
    job_log.changed.fire()
    assert await asyncio.wait_for(following, 5) == ["1", "2", "3", "4", "5"]


async def _collect(source: AsyncIterator[LogLine]) -> list[str]:
    return [line.msg async for line in source]


def test_tailer_stamps_lines_strictly_increasing(tmp_path: Path) -> None:
    job_log = JobLog(tmp_path)
    (tmp_path / "stdout.raw").write_bytes(b"".join(b"%d\n" % n for n in range(50)))
    Tailer(tmp_path, template(), job_log).poll()
    stamps = [line.timestamp for line in job_log.tail(100)]
    assert len(stamps) == 50 and all(a < b for a, b in itertools.pairwise(stamps))


def kept(tmp_path: Path, name: str, n_lines: int, ended: bool, minutes: int) -> Kept:
    job_log = JobLog(tmp_path / name)
    job_log.path.parent.mkdir()
    lines(job_log, ["x" * 10] * n_lines)
    return Kept(name, job_log, ended, utcnow() + timedelta(minutes=minutes))


def test_an_apps_oldest_ended_logs_go_once_newer_ones_hold_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "APP_KEEP_LINES", 100)
    history = [
        kept(tmp_path, "running-old", 10, ended=False, minutes=-60),  # running: never dropped, counted first
        kept(tmp_path, "a", 50, ended=True, minutes=-1),
        kept(tmp_path, "b", 50, ended=True, minutes=-2),  # 110 newer lines once b is counted: c and d go
        kept(tmp_path, "c", 50, ended=True, minutes=-3),
        kept(tmp_path, "d", 1, ended=True, minutes=-4),
    ]
    assert sorted(logs_to_drop(history)) == ["c", "d"]
    assert logs_to_drop(history[:3]) == []


def test_an_apps_logs_are_bounded_in_bytes_and_ended_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = [kept(tmp_path, f"big{i}", 10, ended=True, minutes=-i) for i in range(1, 6)]
    monkeypatch.setattr(logs, "APP_KEEP_BYTES", 2 * big[0].log.disk_bytes() + 1)  # reached with the third
    assert sorted(logs_to_drop(big)) == ["big4", "big5"]
    monkeypatch.setattr(logs, "APP_KEEP_JOBS", 3)
    quiet = [kept(tmp_path, f"quiet{i}", 0, ended=True, minutes=-i) for i in range(1, 6)]  # a silent crash loop
    assert sorted(logs_to_drop(quiet)) == ["quiet4", "quiet5"]


def test_a_writer_far_ahead_loses_its_unread_output_not_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "RAW_BEHIND_MAX", 1000)
    job_log = JobLog(tmp_path)
    tailer = Tailer(tmp_path, template(), job_log)
    (tmp_path / "stdout.raw").write_bytes(b"first\n")
    tailer.poll()
    append(tmp_path / "stdout.raw", b"y\n" * 1000)  # 2000 unread bytes: more than allowed
    tailer.poll()
    assert (tmp_path / "stdout.raw").stat().st_size == 0
    append(tmp_path / "stdout.raw", b"after\n")
    tailer.poll()
    assert [(line.source, line.msg) for line in job_log.tail(10)] == [
        ("app", "first"),
        ("encom", "2000 bytes of stdout skipped: the job writes faster than its log can keep them"),
        ("app", "after"),
    ]


def test_a_poll_reads_a_bounded_amount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "READ_CHUNK", 4)  # reads of 16 bytes
    monkeypatch.setattr(logs, "POLL_READS", 2)
    job_log = JobLog(tmp_path)
    tailer = Tailer(tmp_path, template(), job_log)
    (tmp_path / "stdout.raw").write_bytes(b"".join(b"line %02d\n" % n for n in range(10)))  # 80 bytes
    assert tailer.poll()
    assert len(job_log.tail(100)) == 4  # 32 bytes this time
    tailer.poll(final=True)
    assert len(job_log.tail(100)) == 10
