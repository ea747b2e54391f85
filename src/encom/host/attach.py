"""A job's input side for attachers: the pty master of a TTY job (received from runc over a console socket and
pumped into `stdout.raw`), or the write end of an attached job's stdin pipe. Everything runs in the event loop
on non-blocking fds."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import socket
import struct
import tempfile
import termios
from pathlib import Path

from encom.api.aio import wait_for
from encom.host.logs import Pulse
from encom.host.runtime import RuncError

READ_CHUNK = 1 << 16
WRITE_BUFFER = 1 << 20  # an attacher's input waits while this much is still unwritten
CONSOLE_TIMEOUT = 10.0


class ConsoleSocket:
    """The unix socket runc sends a TTY job's pty master to (`runc run --console-socket`). It lives in a private
    temporary directory: a job directory's path could pass the 108 bytes a socket path may have."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="encom-console-"))
        self.path = self.dir / "sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen(1)
        self.sock.setblocking(False)

    async def receive(self) -> int:
        """The one fd runc sends (close-on-exec, so no later child inherits it)."""
        conn, _ = await asyncio.get_running_loop().sock_accept(self.sock)
        with conn:
            conn.settimeout(CONSOLE_TIMEOUT)
            _, fds, _, _ = await asyncio.to_thread(socket.recv_fds, conn, 4096, 1, socket.MSG_CMSG_CLOEXEC)
        if not fds:
            raise RuncError("runc sent no terminal")
        return fds[0]

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def set_size(fd: int, rows: int, cols: int) -> None:
    """TIOCSWINSZ: the kernel sends SIGWINCH to the terminal's foreground process group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class FdWriter:
    """Buffered writes to a non-blocking fd from the event loop; `write` waits while the buffer is full."""

    def __init__(self, fd: int, limit: int = WRITE_BUFFER) -> None:
        self.fd = fd
        self.limit = limit
        self.buf = bytearray()
        self.closed = False
        self._close_when_empty = False
        self._watching = False
        self._room = asyncio.Event()
        self._room.set()
        os.set_blocking(fd, False)

    async def write(self, data: bytes) -> None:
        if self.closed or self._close_when_empty:
            raise BrokenPipeError("the job's stdin is closed")
        self.buf += data
        self._flush()
        if len(self.buf) > self.limit:
            self._room.clear()
            await self._room.wait()

    def close_when_flushed(self) -> None:
        self._close_when_empty = True
        if not self.buf:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._watch(False)
        os.close(self.fd)
        self.buf.clear()
        self._room.set()

    def _flush(self) -> None:
        while self.buf and not self.closed:
            try:
                written = os.write(self.fd, self.buf)
            except BlockingIOError:
                self._watch(True)
                return
            except OSError:  # the reader is gone (EPIPE, EIO): nothing more can be delivered
                self.close()
                return
            del self.buf[:written]
        self._watch(False)
        self._room.set()
        if self._close_when_empty:
            self.close()

    def _watch(self, on: bool) -> None:
        if on == self._watching:
            return
        loop = asyncio.get_running_loop()
        if on:
            loop.add_writer(self.fd, self._flush)
        else:
            loop.remove_writer(self.fd)
        self._watching = on


class TtyPump:
    """Copies a pty master's output into the job's `stdout.raw` (the log and attachers read it there) until
    every slave is closed (EIO: the job has exited)."""

    def __init__(self, master: int, out: Path, wake: Pulse) -> None:
        self.master = master
        self.wake = wake
        self.done = asyncio.Event()
        self.out = open(out, "ab", buffering=0)  # noqa: SIM115 - closed with the pump
        os.set_blocking(master, False)
        asyncio.get_running_loop().add_reader(master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.master, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.out.write(data)
        self.wake.fire()

    def close(self) -> None:
        if self.done.is_set():
            return
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)
        self.out.close()
        self.done.set()
        self.wake.fire()


class JobInput:
    """Where an attacher's input goes: a pty master (TTY) or a stdin pipe's write end."""

    def __init__(self, fd: int, tty: bool) -> None:
        self.tty = tty
        self.fd = fd
        self.writer = FdWriter(fd)

    @classmethod
    def for_tty(cls, master: int) -> JobInput:
        return cls(os.dup(master), tty=True)  # its own fd: the pump closes the master when the job ends

    async def write(self, data: bytes) -> None:
        await self.writer.write(data)

    def eof(self) -> None:
        """A pipe is closed once flushed; a terminal has no end of input (Ctrl-D is a byte like any other)."""
        if not self.tty:
            self.writer.close_when_flushed()

    def resize(self, rows: int, cols: int) -> None:
        if self.tty and not self.writer.closed:
            set_size(self.fd, rows, cols)

    def close(self) -> None:
        self.writer.close()


async def start_tty(start: asyncio.Task[int], console: ConsoleSocket) -> tuple[int, int]:
    """Wait for runc (`start`, returning the pid) and the pty master it sends; (pid, master)."""
    receiving = asyncio.create_task(console.receive())
    try:
        pid = await start
        master = await wait_for(receiving, CONSOLE_TIMEOUT)
    except BaseException:
        await _discard(receiving)
        raise
    return pid, master


async def _discard(receiving: asyncio.Task[int]) -> None:
    """Cancel a receive; close the fd when it had already come."""
    receiving.cancel()
    with contextlib.suppress(BaseException):
        os.close(await receiving)
