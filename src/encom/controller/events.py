"""The event log: events are rows written in the same transaction as the change they describe; SSE
subscribers are woken after each commit and read what is new from the table, in id order. Reading from
the table (rather than passing events in memory) is what makes "stored, then live" gap- and duplicate-free:
every subscriber just asks for `id > last id it sent`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from encom.api.aio import wait_for
from encom.api.types import Event, EventType
from encom.controller import convert
from encom.controller.db import EVENTS_KEY, Database
from encom.controller.models import EventRow

BATCH = 500
EVENT_LOCK_KEY = 0x656E636F6D  # "encom"
# Also look for new rows this often without a wake-up: another controller process may share the database.
POLL_SECONDS = 5.0


def record(
    session: Session, object_type: EventType, object_id: str, data: BaseModel | dict[str, Any], app_id: str | None
) -> None:
    payload = data.model_dump(mode="json") if isinstance(data, BaseModel) else data
    if not session.info.get(EVENTS_KEY) and session.get_bind().dialect.name == "postgresql":
        # Sequence values are handed out before commit; serialising event-writing transactions keeps
        # commit order equal to id order, which the `id > last` readers rely on. (SQLite writers are serial.)
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": EVENT_LOCK_KEY})
    session.add(EventRow(app_id=app_id, object_type=object_type, object_id=object_id, data=payload))
    session.info[EVENTS_KEY] = True


def last_id(session: Session) -> int:
    return int(session.scalar(select(func.max(EventRow.id))) or 0)


def fetch(session: Session, after: int, app_id: str | None, object_types: list[str] | None, limit: int) -> list[Event]:
    query = select(EventRow).where(EventRow.id > after)
    if app_id:
        query = query.where(EventRow.app_id == app_id)
    if object_types:
        query = query.where(EventRow.object_type.in_(object_types))
    rows = session.scalars(query.order_by(EventRow.id).limit(limit))
    return [convert.event(row) for row in rows]


class EventHub:
    """Wakes the SSE streams of this process when a transaction that recorded events commits."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.loop = asyncio.get_running_loop()
        self.waiters: set[asyncio.Event] = set()
        self.closed = False
        db.on_events = self.notify

    def notify(self) -> None:
        """Callable from any thread."""
        self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        for waiter in self.waiters:
            waiter.set()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _last_id(self) -> int:
        with self.db.read() as session:
            return last_id(session)

    def _fetch(self, after: int, app_id: str | None, object_types: list[str] | None) -> list[Event]:
        with self.db.read() as session:
            return fetch(session, after, app_id, object_types, BATCH)

    async def fetch(self, after: int, app_id: str | None, object_types: list[str] | None) -> list[Event]:
        """Up to BATCH stored events after `after`, oldest first."""
        return await asyncio.to_thread(self._fetch, after, app_id, object_types)

    async def last_id(self) -> int:
        return await asyncio.to_thread(self._last_id)

    @contextlib.contextmanager
    def waiter(self) -> Iterator[asyncio.Event]:
        """An event set after every commit that recorded events; clear it before reading what is new."""
        waiter = asyncio.Event()
        self.waiters.add(waiter)
        try:
            yield waiter
        finally:
            self.waiters.discard(waiter)

    async def stream(
        self, after: int | None, app_id: str | None = None, object_types: list[str] | None = None
    ) -> AsyncIterator[Event]:
        """Events with id > `after` (or, when None, those recorded from now on), until the hub closes."""
        with self.waiter() as waiter:  # before reading the last id, so nothing committed after it goes unnoticed
            last = await self.last_id() if after is None else after
            while not self.closed:
                waiter.clear()
                batch = await self.fetch(last, app_id, object_types)
                for event in batch:
                    yield event
                    last = event.id
                if len(batch) < BATCH:
                    await self._wait(waiter)

    async def _wait(self, waiter: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await wait_for(waiter.wait(), POLL_SECONDS)
