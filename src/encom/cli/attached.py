"""The CLI's side of an attached job: local stdin → STDIN frames, STDOUT/STDERR frames → local stdout/stderr (bytes
as they come), signals and window size changes → the job, until the EXIT frame."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty as ttymod
from collections.abc import Iterator

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from encom.api import attach
from encom.api.attach import AttachExit, FrameError, Kind

CHUNK = attach.MAX_DATA
FORWARDED = {signal.SIGINT: "INT", signal.SIGTERM: "TERM", signal.SIGHUP: "HUP"}


@contextlib.contextmanager
def raw_mode(fd: int, enabled: bool) -> Iterator[None]:
    """The local terminal in raw mode (keys, Ctrl-C included, go to the job's terminal), restored however the
    block ends."""
    if not enabled:
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        ttymod.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_size() -> tuple[int, int]:
    """(rows, cols) of the local terminal."""
    size = os.get_terminal_size(sys.stdout.fileno())
    return size.lines, size.columns


async def read_stdin(fd: int) -> bytes:
    """What stdin has now (b"" at its end), waiting in the event loop for a pipe or terminal."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    try:
        loop.add_reader(fd, readable)
    except (PermissionError, ValueError, OSError):  # a regular file or /dev/null: epoll cannot watch it
        return await asyncio.to_thread(_read, fd)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    return _read(fd)


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, CHUNK)
    except OSError:  # closed or unreadable: as good as its end
        return b""


def _write(stream: int, data: bytes) -> None:
    out = sys.stdout if stream == 1 else sys.stderr
    out.flush()
    out.buffer.write(data)
    out.buffer.flush()


class Session:
    def __init__(self, conn: ClientConnection, tty: bool) -> None:
        self.conn = conn
        self.tty = tty
        self.interrupts = 0
        self.result: AttachExit | None = None
        self.output_closed = False
        self._sends: set[asyncio.Task[None]] = set()

    async def run(self) -> AttachExit | None:
        """Until the job's EXIT frame (returned), or None when the connection is lost first."""
        if self.tty:
            self._send_soon(attach.resize(*terminal_size()))
        pump = asyncio.create_task(self._pump_stdin())
        try:
            with self._signals():
                await self._receive()
        finally:
            pump.cancel()
            await asyncio.gather(pump, *self._sends, return_exceptions=True)
        return self.result

    async def _pump_stdin(self) -> None:
        fd = sys.stdin.fileno()
        while chunk := await read_stdin(fd):
            await self.conn.send(attach.Frame(Kind.STDIN, chunk).encode())
        if not self.tty:
            await self.conn.send(attach.eof())

    async def _receive(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.conn:
                try:
                    frame = attach.decode(message)
                except FrameError as exc:
                    self._error(str(exc))
                    continue
                if frame.kind == Kind.EXIT:
                    self.result = attach.parse_exit(frame)
                    return
                self._show(frame)

    def _show(self, frame: attach.Frame) -> None:
        if self.output_closed:
            return
        try:
            if frame.kind == Kind.STDOUT:
                _write(1, frame.data)
            elif frame.kind == Kind.STDERR:
                _write(2, frame.data)
            elif frame.kind == Kind.ERROR:
                self._error(frame.text())
        except BrokenPipeError:  # `encom run yes | head -1`: stop the job as SIGPIPE would, wait for its exit
            self.output_closed = True
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's exit-time flush must not fail
            self._send_soon(attach.signal("TERM"))

    def _error(self, message: str) -> None:
        text = f"\r\nerror: {message}\r\n" if self.tty else f"error: {message}\n"  # a raw terminal needs \r
        _write(2, text.encode())

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for signum in FORWARDED:
            loop.add_signal_handler(signum, self._on_signal, signum)
        if self.tty:
            loop.add_signal_handler(signal.SIGWINCH, lambda: self._send_soon(attach.resize(*terminal_size())))
        try:
            yield
        finally:
            for signum in [*FORWARDED, signal.SIGWINCH]:
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        """Passed on to the job; a second Ctrl-C kills it."""
        name = FORWARDED[signal.Signals(signum)]
        if signum == signal.SIGINT:
            self.interrupts += 1
            name = "INT" if self.interrupts == 1 else "KILL"
        self._send_soon(attach.signal(name))

    def _send_soon(self, frame: bytes) -> None:
        task = asyncio.create_task(self._send(frame))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, frame: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.conn.send(frame)
