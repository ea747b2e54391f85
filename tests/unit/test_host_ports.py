"""Job port allocation: lowest free, skipping held and unbindable ports."""

from __future__ import annotations

import socket

from encom.host.ports import PortAllocator


def free_block(size: int) -> int:
    for start in range(23000, 24000, size):
        if all(_bindable(p) for p in range(start, start + size)):
            return start
    raise RuntimeError("no free block")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def test_sequential_then_reuses_released_ports() -> None:
    start = free_block(5)
    ports = PortAllocator(start, start + 4)
    assert [ports.allocate() for _ in range(3)] == [start, start + 1, start + 2]
    ports.release(start + 1)
    assert ports.allocate() == start + 1
    ports.reserve(start + 3)
    assert ports.allocate() == start + 4


def test_skips_ports_in_use_by_others() -> None:
    start = free_block(3)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", start))
        busy.listen()
        ports = PortAllocator(start, start + 2)
        assert ports.allocate() == start + 1


def test_exhaustion_is_an_error() -> None:
    start = free_block(1)
    ports = PortAllocator(start, start)
    ports.allocate()
    try:
        ports.allocate()
    except LookupError as exc:
        assert str(start) in str(exc)
    else:
        raise AssertionError("allocated past the end of the range")
