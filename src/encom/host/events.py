"""Fan-out of job state changes to every `/host/events` subscriber."""

from __future__ import annotations

import asyncio

from encom.api.types import HostJob

QUEUE_LIMIT = 10_000


class EventHub:
    def __init__(self) -> None:
        self.subscribers: set[asyncio.Queue[HostJob | None]] = set()
        self.closed = False

    def publish(self, job: HostJob) -> None:
        snapshot = job.model_copy(deep=True)
        for queue in list(self.subscribers):
            if queue.qsize() < QUEUE_LIMIT:  # a stuck subscriber must not grow memory forever
                queue.put_nowait(snapshot)

    def subscribe(self) -> asyncio.Queue[HostJob | None]:
        """A queue of every change from now on; None marks the end (the host is shutting down)."""
        queue: asyncio.Queue[HostJob | None] = asyncio.Queue()
        if self.closed:
            queue.put_nowait(None)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[HostJob | None]) -> None:
        self.subscribers.discard(queue)

    def close(self) -> None:
        """End every stream, so that the server's graceful shutdown does not wait for them."""
        self.closed = True
        for queue in self.subscribers:
            queue.put_nowait(None)
