"""Where discoverd keeps its state: the `Store` protocol and the single-machine `MemoryStore`.

A store owns instances (with their TTL), per-service metadata and the event stream. The API layer only
translates HTTP to these calls, so a cluster store (etcd: leases for TTLs, revisions for indexes, a watch
for events) can replace `MemoryStore` without touching the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from encom.api.errors import Conflict
from encom.api.types import Instance, InstanceRegistration, ServiceEvent, ServiceEventKind, ServiceMeta, utcnow
from encom.discoverd.client import TTL_SECONDS

log = logging.getLogger(__name__)

SCAN_SECONDS = 1.0
SUBSCRIBER_QUEUE_SIZE = 4096  # a watcher this far behind is dropped; it reconnects and gets a fresh snapshot


class Store(Protocol):
    async def register(self, service: str, instance_id: str, reg: InstanceRegistration) -> Instance:
        """Add an instance or, when it exists, refresh its TTL (a heartbeat) and apply any change."""
        ...

    async def deregister(self, service: str, instance_id: str) -> bool:
        """Remove an instance; False when it was not registered."""
        ...

    async def instances(self, service: str) -> list[Instance]:
        """Live instances ordered by index."""
        ...

    async def leader(self, service: str) -> Instance | None: ...

    async def services(self) -> list[str]:
        """Services that have live instances or metadata, sorted."""
        ...

    async def get_meta(self, service: str) -> ServiceMeta | None: ...

    async def set_meta(self, service: str, meta: ServiceMeta) -> ServiceMeta:
        """Compare-and-swap: `meta.index` must be the current index (0 = none yet); raises Conflict otherwise."""
        ...

    def watch(self, service: str) -> AsyncIterator[ServiceEvent]:
        """One "up" per live instance (index order), "current", then live events, with none lost in between.
        Ends when the store closes or the watcher falls too far behind."""
        ...

    async def run(self) -> None:
        """Background upkeep (expiry) until cancelled."""
        ...

    async def close(self) -> None:
        """End every watch."""
        ...


@dataclass
class _Entry:
    instance: Instance
    expires_at: float


@dataclass(eq=False)  # compared and hashed by identity: kept in sets
class _Subscriber:
    queue: asyncio.Queue[ServiceEvent | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=SUBSCRIBER_QUEUE_SIZE)
    )

    def offer(self, event: ServiceEvent | None) -> bool:
        """Queue an event; False when the subscriber is too far behind to keep."""
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            return False
        return True


class MemoryStore:
    """Everything in this process's memory; for a single machine."""

    def __init__(
        self,
        ttl: float = TTL_SECONDS,
        scan_interval: float = SCAN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.scan_interval = scan_interval
        self.clock = clock
        self._next_index = 1
        self._instances: dict[str, dict[str, _Entry]] = {}
        self._leaders: dict[str, str] = {}  # service -> leader instance id, as last announced
        self._meta: dict[str, ServiceMeta] = {}
        self._subscribers: dict[str, set[_Subscriber]] = {}
        self._closed = False

    # Every mutation below runs without awaiting, so each is atomic with respect to other tasks.

    async def register(self, service: str, instance_id: str, reg: InstanceRegistration) -> Instance:
        entries = self._instances.setdefault(service, {})
        expires_at = self.clock() + self.ttl
        entry = entries.get(instance_id)
        if entry is None:
            instance = Instance(
                id=instance_id,
                service=service,
                index=self._take_index(),
                created_at=utcnow(),
                **reg.model_dump(),
            )
            entries[instance_id] = _Entry(instance, expires_at)
            self._publish(service, "up", instance)
            self._announce_leader(service)
            return instance
        entry.expires_at = expires_at
        if reg != InstanceRegistration.model_validate(entry.instance.model_dump()):
            entry.instance = entry.instance.model_copy(update=reg.model_dump())
            self._publish(service, "update", entry.instance)
        return entry.instance

    async def deregister(self, service: str, instance_id: str) -> bool:
        return self._remove(service, instance_id)

    async def instances(self, service: str) -> list[Instance]:
        return self._sorted(service)

    async def leader(self, service: str) -> Instance | None:
        live = self._sorted(service)
        return live[0] if live else None

    async def services(self) -> list[str]:
        return sorted({name for name, entries in self._instances.items() if entries} | set(self._meta))

    async def get_meta(self, service: str) -> ServiceMeta | None:
        return self._meta.get(service)

    async def set_meta(self, service: str, meta: ServiceMeta) -> ServiceMeta:
        current = self._meta.get(service)
        current_index = current.index if current else 0
        if meta.index != current_index:
            raise Conflict(
                f"metadata of {service} is at index {current_index}, not {meta.index}: read it again and retry"
            )
        stored = ServiceMeta(data=meta.data, index=self._take_index())
        self._meta[service] = stored
        return stored

    async def watch(self, service: str) -> AsyncGenerator[ServiceEvent, None]:
        if self._closed:
            return
        # Snapshot and subscription happen together, before any await, so no event falls between them.
        snapshot = self._sorted(service)
        subscriber = _Subscriber()
        self._subscribers.setdefault(service, set()).add(subscriber)
        try:
            for instance in snapshot:
                yield ServiceEvent(kind="up", service=service, instance=instance)
            yield ServiceEvent(kind="current", service=service)
            while (event := await subscriber.queue.get()) is not None:
                yield event
        finally:
            self._unsubscribe(service, subscriber)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.scan_interval)
            try:
                self.expire()
            except Exception:  # one bad scan must not stop expiry for good
                log.exception("discoverd expiry scan failed")

    def expire(self) -> list[Instance]:
        """Remove every instance whose TTL has run out; returns them."""
        now = self.clock()
        expired = [
            entry.instance
            for entries in self._instances.values()
            for entry in entries.values()
            if entry.expires_at <= now
        ]
        for instance in expired:
            log.info("discoverd: %s/%s expired", instance.service, instance.id)
            self._remove(instance.service, instance.id)
        return expired

    async def close(self) -> None:
        self._closed = True
        for subscribers in list(self._subscribers.values()):
            for subscriber in list(subscribers):
                with contextlib.suppress(asyncio.QueueFull):
                    subscriber.queue.put_nowait(None)

    # ------------------------------------------------------------ internals

    def _take_index(self) -> int:
        index = self._next_index
        self._next_index += 1
        return index

    def _sorted(self, service: str) -> list[Instance]:
        return sorted((e.instance for e in self._instances.get(service, {}).values()), key=lambda i: i.index)

    def _remove(self, service: str, instance_id: str) -> bool:
        entries = self._instances.get(service, {})
        entry = entries.pop(instance_id, None)
        if entry is None:
            return False
        if not entries:
            del self._instances[service]
        self._publish(service, "down", entry.instance)
        self._announce_leader(service)
        return True

    def _announce_leader(self, service: str) -> None:
        """Emit "leader" when the oldest live instance is not the one last announced."""
        live = self._sorted(service)
        if not live:
            self._leaders.pop(service, None)
            return
        if self._leaders.get(service) != live[0].id:
            self._leaders[service] = live[0].id
            self._publish(service, "leader", live[0])

    def _publish(self, service: str, kind: ServiceEventKind, instance: Instance) -> None:
        event = ServiceEvent(kind=kind, service=service, instance=instance)
        for subscriber in list(self._subscribers.get(service, ())):
            if not subscriber.offer(event):
                log.warning("discoverd: dropping a watcher of %s that fell behind", service)
                self._unsubscribe(service, subscriber)
                subscriber.queue.get_nowait()  # make room for the end-of-stream marker
                subscriber.queue.put_nowait(None)

    def _unsubscribe(self, service: str, subscriber: _Subscriber) -> None:
        subscribers = self._subscribers.get(service)
        if subscribers is None:
            return
        subscribers.discard(subscriber)
        if not subscribers:
            del self._subscribers[service]
