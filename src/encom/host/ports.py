"""Job ports: the lowest port from the range that no active job holds and that can be bound right now."""

from __future__ import annotations

import socket


def bindable(port: int) -> bool:
    """Whether a job could listen on `port` on every interface (SO_REUSEADDR, as servers set it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


class PortAllocator:
    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.taken: set[int] = set()

    def allocate(self) -> int:
        for port in range(self.start, self.end + 1):
            if port not in self.taken and bindable(port):
                self.taken.add(port)
                return port
        raise LookupError(f"no free job port in {self.start}-{self.end}")

    def reserve(self, port: int) -> None:
        """Keep a port an adopted job already listens on."""
        self.taken.add(port)

    def release(self, port: int | None) -> None:
        if port is not None:
            self.taken.discard(port)
