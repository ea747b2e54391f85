"""The attach protocol shared by host, controller and CLI: binary websocket messages whose first byte is the kind.

Client → job: STDIN (bytes), STDIN_EOF, RESIZE (rows, cols as two big-endian u16), SIGNAL (an ASCII name).
Job → client: STDOUT, STDERR (bytes, exactly as written), EXIT (an `AttachExit` as JSON, the last message),
ERROR (a UTF-8 message; the session goes on unless the server closes it).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from encom.api.types import HostJobState, Wire

MAX_DATA = 1 << 16  # payload bytes of one frame; larger frames are refused
MAX_MESSAGE = MAX_DATA + 1
SIGNALS = frozenset({"INT", "TERM", "QUIT", "HUP", "KILL"})
_SIZE = struct.Struct(">HH")


class Kind(enum.IntEnum):
    STDIN = 0
    STDIN_EOF = 1
    STDOUT = 2
    STDERR = 3
    RESIZE = 4
    SIGNAL = 5
    EXIT = 6
    ERROR = 7


class FrameError(ValueError):
    """A message that is not a valid frame; the message says why."""


class AttachExit(Wire):
    """How the job ended (the EXIT frame)."""

    state: HostJobState
    exit_status: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class Frame:
    kind: Kind
    data: bytes = b""

    def encode(self) -> bytes:
        return bytes([self.kind]) + self.data

    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")

    def size(self) -> tuple[int, int]:
        """The (rows, cols) of a RESIZE frame."""
        if len(self.data) != _SIZE.size:
            raise FrameError("a resize frame carries rows and cols as two 16-bit numbers")
        rows, cols = _SIZE.unpack(self.data)
        if not rows or not cols:
            raise FrameError("rows and cols must be positive")
        return rows, cols

    def signal(self) -> str:
        """The validated signal name of a SIGNAL frame."""
        name = self.text().upper().removeprefix("SIG")
        if name not in SIGNALS:
            raise FrameError(f"signal must be one of {', '.join(sorted(SIGNALS))}")
        return name


def decode(message: bytes | str | None) -> Frame:
    if not isinstance(message, bytes):
        raise FrameError("frames are binary messages")
    if not message:
        raise FrameError("empty frame")
    if len(message) > MAX_MESSAGE:
        raise FrameError(f"frame larger than {MAX_DATA} bytes")
    try:
        kind = Kind(message[0])
    except ValueError:
        raise FrameError(f"unknown frame kind {message[0]}") from None
    return Frame(kind, message[1:])


def data(kind: Kind, chunk: bytes) -> list[bytes]:
    """Encoded frames carrying `chunk`, split to the size limit."""
    return [bytes([kind]) + chunk[i : i + MAX_DATA] for i in range(0, len(chunk), MAX_DATA)]


def resize(rows: int, cols: int) -> bytes:
    return Frame(Kind.RESIZE, _SIZE.pack(min(rows, 0xFFFF), min(cols, 0xFFFF))).encode()


def signal(name: str) -> bytes:
    return Frame(Kind.SIGNAL, name.encode()).encode()


def eof() -> bytes:
    return Frame(Kind.STDIN_EOF).encode()


def error(message: str) -> bytes:
    return Frame(Kind.ERROR, message.encode()[:MAX_DATA]).encode()


def exit_frame(result: AttachExit) -> bytes:
    return Frame(Kind.EXIT, result.model_dump_json().encode()).encode()


def parse_exit(frame: Frame) -> AttachExit:
    try:
        return AttachExit.model_validate_json(frame.data)
    except ValueError as exc:
        raise FrameError(f"bad exit frame: {exc}") from None
