"""Job logs: the container writes raw stdout/stderr files; a tailer turns their complete lines into LogLine JSON
lines in the job's `log.jsonl`, which the API reads (tail and follow)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from encom.api.aio import wait_for
from encom.api.files import write_private
from encom.api.types import LogLine, utcnow

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 10_000
LOG_ROTATE_LINES = 10_000  # log.jsonl moves to log.1.jsonl beyond this many lines or bytes: two generations kept,
LOG_ROTATE_BYTES = 8 << 20  # so a job always holds its last 10,000 lines unless they are very long
APP_KEEP_LINES = 10_000  # an app's ended jobs' logs go once its newer logs hold this many lines...
APP_KEEP_BYTES = 64 << 20  # ...or this many bytes on this host
APP_KEEP_JOBS = 200  # ...or it has this many newer ended jobs (a crash loop that prints nothing)
RAW_TRUNCATE_BYTES = 16 << 20  # a fully consumed raw file beyond this is truncated (the writer appends)
RAW_BEHIND_MAX = 64 << 20  # unread output beyond this is dropped (said in the log) rather than fill the disk
POLL_READS = 4  # reads per stream and poll: a job writing without pause cannot hold the event loop
READ_CHUNK = 1 << 16
ONE_MICROSECOND = timedelta(microseconds=1)
POLL_MIN = 0.02
POLL_MAX = 0.25
KEEPALIVE = 10.0  # seconds of silence before an app log follower sends a keepalive

Stream = Literal["stdout", "stderr"]
STREAMS: tuple[Stream, ...] = ("stdout", "stderr")


class LineSplitter:
    """Bytes in, complete text lines out. Over-long lines are split; invalid UTF-8 is replaced."""

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.buf = b""

    def feed(self, data: bytes) -> list[str]:
        self.buf += data
        lines: list[str] = []
        while True:
            nl = self.buf.find(b"\n", 0, self.max_bytes + 1)
            if nl >= 0:
                lines.append(self._decode(self.buf[:nl]))
                self.buf = self.buf[nl + 1 :]
            elif len(self.buf) > self.max_bytes:
                cut = self._boundary(self.max_bytes)
                lines.append(self._decode(self.buf[:cut]))
                self.buf = self.buf[cut:]
            else:
                return lines

    def flush(self) -> list[str]:
        """What is left once the writer is gone."""
        rest, self.buf = self.buf, b""
        return [self._decode(rest)] if rest else []

    def _boundary(self, cut: int) -> int:
        """Back off so a multi-byte UTF-8 character is not split (when the data is UTF-8 at all)."""
        for back in range(4):
            if cut - back > 0 and (self.buf[cut - back] & 0xC0) != 0x80:
                return cut - back
        return cut

    @staticmethod
    def _decode(raw: bytes) -> str:
        return raw.removesuffix(b"\r").decode("utf-8", errors="replace")


class Pulse:
    """Wakes every waiter on each fire."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await wait_for(self._event.wait(), seconds)


@dataclass
class Cursor:
    """Where a reader of a log file is: the file (by inode, which survives the rotation's rename) and offset."""

    inode: int = 0
    offset: int = 0


class JobLog:
    """One job's `log.jsonl` (and its previous generation)."""

    def __init__(self, job_dir: Path) -> None:
        self.path = job_dir / "log.jsonl"
        self.old = job_dir / "log.1.jsonl"
        self.changed = Pulse()
        self.also: Pulse | None = None  # the host's "some log changed" pulse (app log followers wait on it)
        self._lines: int | None = None  # lines in log.jsonl, counted when first needed
        self._old_lines: int | None = None

    def append(self, lines: list[LogLine]) -> None:
        if not lines:
            return
        count = self._current_lines() + len(lines)
        data = "".join(line.model_dump_json() + "\n" for line in lines).encode()
        with open(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as f:
            f.write(data)
            size = f.tell()
        if size > LOG_ROTATE_BYTES or count >= LOG_ROTATE_LINES:
            self.path.replace(self.old)
            self._old_lines, count = count, 0
        self._lines = count
        self.changed.fire()
        if self.also is not None:
            self.also.fire()

    def _current_lines(self) -> int:
        if self._lines is None:
            self._lines = _count_lines(self.path)
        return self._lines

    def line_count(self) -> int:
        """Lines kept, both generations."""
        if self._old_lines is None:
            self._old_lines = _count_lines(self.old)
        return self._current_lines() + self._old_lines

    def disk_bytes(self) -> int:
        return sum(_size(p) for p in (self.path, self.old))

    def size(self) -> int:
        return _size(self.path)

    def cursor(self) -> Cursor:
        """The end of the log as it is now: a reader starting here gets every line appended later."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return Cursor()
        return Cursor(st.st_ino, st.st_size)

    def read_new(self, cursor: Cursor) -> bytes:
        """What was appended since `cursor` (which moves on). Across a rotation, the rest of the rotated file
        comes first, so no line is lost to it."""
        data = b""
        try:
            f = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return data
        with f:
            st = os.fstat(f.fileno())
            if cursor.inode and st.st_ino != cursor.inode:
                data = _rest_of(self.old, cursor)
                cursor.offset = 0
            cursor.inode = st.st_ino
            if st.st_size < cursor.offset:  # truncated: start again
                cursor.offset = 0
            f.seek(cursor.offset)
            data += f.read()
            cursor.offset = f.tell()
        return data

    def tail(self, n: int) -> list[LogLine]:
        if n <= 0:
            return []
        raw = _last_lines(self.path, n)
        if len(raw) < n:
            raw = _last_lines(self.old, n - len(raw)) + raw
        return _parse(raw)

    async def follow(self, n: int, ended: Callable[[], bool]) -> AsyncIterator[LogLine]:
        """The last n lines, then new ones until `ended()` says no more will come."""
        cursor = self.cursor()  # no await between this and tail(): appends happen in this loop
        for line in self.tail(n):
            yield line
        pending = b""
        while True:
            done = ended()  # read before draining so nothing written before the end is missed
            data = self.read_new(cursor)
            pending += data
            *complete, pending = pending.split(b"\n")
            for line in _parse(complete):
                yield line
            if data:
                continue  # more may have come meanwhile; only an empty read may end or wait
            if done:
                return
            await self.changed.wait(1.0)


def merged_tail(logs: list[JobLog], n: int, since: datetime | None = None) -> list[LogLine]:
    """The last n lines of these logs together (after `since`, when given), oldest first."""
    if n <= 0:
        return []
    merged = [line for job_log in logs for line in job_log.tail(n) if since is None or line.timestamp > since]
    merged.sort(key=lambda line: line.timestamp)
    return merged[-n:]


async def follow_many(
    history: list[JobLog],
    live: Callable[[], list[JobLog]],
    n: int,
    changed: Pulse,
    ended: Callable[[], bool],
    since: datetime | None = None,
    idle: float = KEEPALIVE,
) -> AsyncIterator[LogLine | None]:
    """The last n lines of the `history` logs merged by time (after `since`, when given), then None (the end of
    the history), then the new lines of every log `live()` returns from then on (jobs that start later too: a
    log not in `history` is read from its start), each batch in time order, until `ended()`. After `idle`
    seconds without a line, a None again (a keepalive). `changed` fires on every append to any log."""
    cursors = {job_log.path: job_log.cursor() for job_log in history}
    for line in merged_tail(history, n, since):  # no await since the offsets: appends happen in this loop
        yield line
    yield None
    pending: dict[Path, bytes] = {}
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    while True:
        done = ended()  # read before draining so nothing written before the end is missed
        batch: list[bytes] = []
        for job_log in live():
            data = job_log.read_new(cursors.setdefault(job_log.path, Cursor()))
            if data:
                *complete, pending[job_log.path] = (pending.get(job_log.path, b"") + data).split(b"\n")
                batch.extend(complete)
        lines = _parse(batch)
        if lines:
            lines.sort(key=lambda line: line.timestamp)
            for line in lines:
                yield line
            quiet_since = loop.time()
            continue  # more may have come meanwhile; only an empty read may end or wait
        if done:
            return
        if loop.time() - quiet_since >= idle:
            yield None
            quiet_since = loop.time()
        await changed.wait(min(1.0, max(0.01, quiet_since + idle - loop.time())))


def _rest_of(path: Path, cursor: Cursor) -> bytes:
    """What follows the cursor in `path`, if `path` is still the file the cursor is in (else it is gone)."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_ino != cursor.inode:
                return b""
            f.seek(cursor.offset)
            return f.read()
    except FileNotFoundError:
        return b""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _count_lines(path: Path) -> int:
    try:
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return 0
    with f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


@dataclass
class Kept:
    """A job's log as the retention rule sees it."""

    job_id: str
    log: JobLog
    ended: bool
    when: datetime  # when it ended (when it was created, for a job still running)


def logs_to_drop(app_logs: list[Kept]) -> list[str]:
    """The ended jobs of one app whose logs may go: the oldest ones, once the app's newer logs hold APP_KEEP_LINES
    lines or APP_KEEP_BYTES bytes, or it has APP_KEEP_JOBS newer ended jobs. Running jobs' logs stay (their own
    rotation bounds them)."""
    newest_first = sorted(app_logs, key=lambda k: (not k.ended, k.when), reverse=True)
    lines = size = ended = 0
    dropped = []
    for kept in newest_first:
        if kept.ended and (lines >= APP_KEEP_LINES or size >= APP_KEEP_BYTES or ended >= APP_KEEP_JOBS):
            dropped.append(kept.job_id)
            continue
        lines += kept.log.line_count()
        size += kept.log.disk_bytes()
        ended += kept.ended
    return dropped


def _last_lines(path: Path, n: int) -> list[bytes]:
    try:
        f = open(path, "rb")  # noqa: SIM115
    except FileNotFoundError:
        return []
    with f:
        end = f.seek(0, os.SEEK_END)
        pos, data = end, b""
        while pos > 0 and data.count(b"\n") <= n:
            step = min(READ_CHUNK, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    lines = [line for line in data.split(b"\n") if line.strip()]
    if pos > 0:
        lines = lines[1:]  # the first one may be partial
    return lines[-n:]


def _parse(raw: list[bytes]) -> list[LogLine]:
    result = []
    for line in raw:
        if not line.strip():
            continue
        try:
            result.append(LogLine.model_validate_json(line))
        except ValidationError:
            log.debug("skipping a malformed log line")
    return result


class Tailer:
    """Turns a job's raw output files into LogLines. Offsets persist, so an adopting encomd picks up where the
    previous one stopped. Reads are small and run in the event loop, which keeps appends ordered with readers."""

    def __init__(self, job_dir: Path, template: LogLine, job_log: JobLog) -> None:
        self.dir = job_dir
        self.template = template
        self.log = job_log
        self.offsets_path = job_dir / "tail.json"
        self.offsets = self._load_offsets()
        self.splitters = {s: LineSplitter() for s in STREAMS}
        self.drained = asyncio.Event()
        self.running = False
        self.stamp: datetime | None = None  # the last line's time

    def raw_path(self, stream: Stream) -> Path:
        return self.dir / f"{stream}.raw"

    def _load_offsets(self) -> dict[str, int]:
        try:
            data = json.loads(self.offsets_path.read_text())
            return {"stdout": int(data["stdout"]), "stderr": int(data["stderr"])}
        except (OSError, ValueError, KeyError, TypeError):
            return {"stdout": 0, "stderr": 0}

    def _save_offsets(self) -> None:
        write_private(self.offsets_path, json.dumps(self.offsets))

    def _read(self, stream: Stream) -> bytes:
        path = self.raw_path(stream)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offsets[stream]:
                    self.offsets[stream] = 0
                behind = size - self.offsets[stream]
                if behind > RAW_BEHIND_MAX:
                    self._skip(stream, behind)
                    return b""
                f.seek(self.offsets[stream])
                data = f.read(READ_CHUNK * 4)
                self.offsets[stream] = f.tell()
        except FileNotFoundError:
            return b""
        if self.offsets[stream] == size and size > RAW_TRUNCATE_BYTES:
            # A race with the writer could lose a line written between the read and here; rare, and bounded.
            os.truncate(path, 0)
            self.offsets[stream] = 0
        return data

    def _skip(self, stream: Stream, behind: int) -> None:
        """The job writes faster than its log keeps up: drop what is unread (truncating the raw file, which the
        writer appends to) rather than let it fill the disk, and say so in the log."""
        os.truncate(self.raw_path(stream), 0)
        self.offsets[stream] = 0
        self.splitters[stream] = LineSplitter()
        self.note(f"{behind} bytes of {stream} skipped: the job writes faster than its log can keep them")

    def note(self, msg: str) -> None:
        """An `encom[web.1]: ...` line in the job's log (what encom says about the job)."""
        update = {"timestamp": utcnow(), "source": "encom", "stream": "stdout", "msg": msg}
        self.log.append([self.template.model_copy(update=update)])

    def poll(self, final: bool = False) -> bool:
        """Read what is new, at most POLL_READS chunks a stream so a fast writer cannot hold the event loop (all of
        it and the unterminated rest with `final`). Whether anything was read."""
        out: list[LogLine] = []
        got = False
        for stream in STREAMS:
            reads = 0
            while final or reads < POLL_READS:
                data = self._read(stream)
                if not data:
                    break
                reads += 1
                got = True
                out.extend(self._lines(stream, self.splitters[stream].feed(data)))
            if final:
                out.extend(self._lines(stream, self.splitters[stream].flush()))
        if out:
            self.log.append(out)
        if got:
            self._save_offsets()
        return got

    def _lines(self, stream: Stream, texts: list[str]) -> list[LogLine]:
        lines = []
        now = utcnow()
        for text in texts:
            # strictly increasing, so a reader resuming after a line's time misses none of the same read
            self.stamp = now if self.stamp is None or now > self.stamp else self.stamp + ONE_MICROSECOND
            lines.append(self.template.model_copy(update={"timestamp": self.stamp, "stream": stream, "msg": text}))
        return lines

    async def run(self, stopped: asyncio.Event) -> None:
        """Poll until `stopped` is set (the process has exited), then drain."""
        self.running = True
        delay = POLL_MIN
        while not stopped.is_set():
            got = self.poll()
            delay = POLL_MIN if got else min(POLL_MAX, delay * 2)
            with contextlib.suppress(TimeoutError):
                await wait_for(stopped.wait(), delay)
        self.poll(final=True)
        self.drained.set()
        self.log.changed.fire()
