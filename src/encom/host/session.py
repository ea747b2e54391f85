"""One attacher of a job (`GET /host/jobs/{id}/attach`): the job's stdout/stderr bytes from the start as they are
written, its stdin, terminal size and signals from the client, and the exit frame once the output is drained.
Frames from the client are untrusted: anything invalid gets an error frame and the session goes on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import BinaryIO

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from encom.api import attach
from encom.api.attach import AttachExit, Frame, FrameError, Kind
from encom.host.logs import STREAMS, Stream
from encom.host.runner import JobRunner
from encom.host.runtime import Runc

log = logging.getLogger(__name__)

READ_LIMIT = 4 * attach.MAX_DATA  # per file and round, so both streams advance
POLL_MIN = 0.01
POLL_MAX = 0.1
SEND_ERRORS = (WebSocketDisconnect, RuntimeError, OSError)


class RawReader:
    """Reads a raw output file from its start as it grows. The file stays open once it exists, so what was
    written is still read after the job's clean-up removed it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: BinaryIO | None = None
        self.offset = 0

    def read(self) -> bytes:
        if self.file is None:
            try:
                self.file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
            except FileNotFoundError:
                return b""
        if os.fstat(self.file.fileno()).st_size < self.offset:  # truncated by the tailer (a huge output)
            self.offset = 0
        self.file.seek(self.offset)
        data = self.file.read(READ_LIMIT)
        self.offset += len(data)
        return data

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class AttachSession:
    def __init__(self, ws: WebSocket, runner: JobRunner, runc: Runc) -> None:
        self.ws = ws
        self.runner = runner
        self.runc = runc
        self.readers: dict[Stream, RawReader] = {s: RawReader(runner.tailer.raw_path(s)) for s in STREAMS}

    async def run(self) -> None:
        await self.ws.accept()
        if self.runner.attached:
            await self._send(attach.error(f"job {self.runner.id} already has an attached client"))
            await self._close()
            return
        self.runner.attached = self.runner.ever_attached = True
        try:
            await self._serve()
        finally:
            self.runner.attached = False
            for reader in self.readers.values():
                reader.close()

    async def _serve(self) -> None:
        spec = self.runner.job.spec
        if self.runner.adopted and (spec.stdin or spec.tty):
            await self._send(attach.error(self._no_input()))
        output = asyncio.create_task(self._output())
        inputs = asyncio.create_task(self._input())
        try:
            done, _ = await asyncio.wait({output, inputs}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (output, inputs):
                task.cancel()
            await asyncio.gather(output, inputs, return_exceptions=True)
        if output in done and output.exception() is None:  # the exit frame went out
            await self._close()
        else:  # the client left (or could no longer be written to) first
            self.runner.hang_up()

    # ------------------------------------------------------------------ job → client

    async def _output(self) -> None:
        delay = POLL_MIN
        while True:
            ended = self.runner.ended.is_set()  # before reading: what was written before the end is sent
            if await self._send_new():
                delay = POLL_MIN
                continue
            if ended:
                break
            await self.runner.output.wait(delay)
            delay = min(POLL_MAX, delay * 2)
        job = self.runner.job
        result = AttachExit(state=job.state, exit_status=job.exit_status, error=job.error)
        await self.ws.send_bytes(attach.exit_frame(result))

    async def _send_new(self) -> bool:
        sent = False
        for stream in STREAMS:
            data = self.readers[stream].read()
            kind = Kind.STDOUT if stream == "stdout" else Kind.STDERR
            for frame in attach.data(kind, data):
                await self.ws.send_bytes(frame)
                sent = True
        return sent

    # ------------------------------------------------------------------ client → job

    async def _input(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("bytes")
            try:
                await self._handle(attach.decode(raw if raw is not None else message.get("text")))
            except FrameError as exc:
                await self._send(attach.error(str(exc)))

    async def _handle(self, frame: Frame) -> None:
        if frame.kind == Kind.SIGNAL:
            await self._signal(frame.signal())
        elif frame.kind in (Kind.STDIN, Kind.STDIN_EOF, Kind.RESIZE):
            await self._to_input(frame)
        else:
            raise FrameError(f"{frame.kind.name} frames go from the job to the client")

    async def _to_input(self, frame: Frame) -> None:
        await self.runner.io_ready.wait()  # input sent before the container runs waits for it, in order
        job_input = self.runner.input
        if job_input is None:
            raise FrameError(self._no_input())
        if frame.kind == Kind.RESIZE:
            if not job_input.tty:
                raise FrameError(f"job {self.runner.id} has no terminal")
            job_input.resize(*frame.size())
        elif frame.kind == Kind.STDIN_EOF:
            job_input.eof()
        else:
            try:
                await job_input.write(frame.data)
            except BrokenPipeError:
                raise FrameError(f"the stdin of job {self.runner.id} is closed") from None
        self.runner.output.fire()  # an echo may follow at once: look for output now

    async def _signal(self, name: str) -> None:
        if self.runner.exited.is_set():
            raise FrameError(f"job {self.runner.id} has exited")
        await self.runc.kill(self.runner.id, name)

    def _no_input(self) -> str:
        job_id, spec = self.runner.id, self.runner.job.spec
        if self.runner.ended.is_set() or self.runner.exited.is_set():
            return f"job {job_id} has exited"
        if not (spec.stdin or spec.tty):
            return f"job {job_id} was not started attached: it takes no input"
        if self.runner.adopted:
            return f"the stdin and terminal of job {job_id} cannot be reattached after an encomd restart"
        return f"job {job_id} takes no input"

    # ------------------------------------------------------------------ helpers

    async def _send(self, frame: bytes) -> None:
        with contextlib.suppress(*SEND_ERRORS):
            await self.ws.send_bytes(frame)

    async def _close(self) -> None:
        with contextlib.suppress(*SEND_ERRORS):
            await self.ws.close()
