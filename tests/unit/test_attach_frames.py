"""The attach frame protocol: encoding, and what a server refuses from a client."""

from __future__ import annotations

import pytest

from encom.api import attach
from encom.api.attach import AttachExit, Frame, FrameError, Kind


def test_frames_round_trip() -> None:
    assert attach.decode(attach.resize(40, 132)).size() == (40, 132)
    assert attach.decode(attach.signal("sigint")).signal() == "INT"
    assert attach.decode(attach.eof()) == Frame(Kind.STDIN_EOF)
    assert attach.decode(attach.error("nope")).text() == "nope"
    done = AttachExit(state="crashed", exit_status=3, error="exited with status 3")
    assert attach.parse_exit(attach.decode(attach.exit_frame(done))) == done


def test_data_is_split_at_the_limit() -> None:
    frames = attach.data(Kind.STDOUT, b"x" * (attach.MAX_DATA * 2 + 1))
    assert [len(f) - 1 for f in frames] == [attach.MAX_DATA, attach.MAX_DATA, 1]
    assert all(attach.decode(f).kind == Kind.STDOUT for f in frames)
    assert attach.data(Kind.STDOUT, b"") == []


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"", "empty frame"),
        ("text", "binary"),
        (None, "binary"),
        (bytes([200]), "unknown frame kind 200"),
        (bytes([Kind.STDIN]) + b"x" * (attach.MAX_DATA + 1), "larger than"),
    ],
)
def test_bad_messages_are_refused(message: bytes | str | None, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        attach.decode(message)


def test_bad_payloads_are_refused() -> None:
    with pytest.raises(FrameError, match="one of HUP, INT, KILL, QUIT, TERM"):
        Frame(Kind.SIGNAL, b"STOP").signal()
    with pytest.raises(FrameError, match="two 16-bit"):
        Frame(Kind.RESIZE, b"\x00").size()
    with pytest.raises(FrameError, match="positive"):
        Frame(Kind.RESIZE, b"\x00\x00\x00\x05").size()
    with pytest.raises(FrameError, match="bad exit frame"):
        attach.parse_exit(Frame(Kind.EXIT, b"{"))
