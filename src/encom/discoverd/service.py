"""The discoverd role: the registry API plus the store's upkeep (TTL expiry)."""

from __future__ import annotations

import asyncio
import contextlib

from encom.api.role import RoleContext
from encom.api.server import embedded_server, run_server
from encom.discoverd.api import create_app
from encom.discoverd.store import MemoryStore, Store


async def run(ctx: RoleContext, store: Store | None = None) -> None:
    """Serve until cancelled. `store` defaults to a fresh `MemoryStore` (tests pass one with a short TTL)."""
    store = store if store is not None else MemoryStore()
    settings = ctx.settings
    server = embedded_server(create_app(store, settings.internal_secret), settings.bind, settings.ports.discoverd)
    upkeep = asyncio.create_task(store.run(), name="discoverd-upkeep")
    serving = asyncio.create_task(run_server(server, ctx.ready), name="discoverd-api")
    try:
        done, _ = await asyncio.wait({upkeep, serving}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # surface the failure (e.g. the port is taken)
        raise RuntimeError("discoverd stopped unexpectedly")
    finally:
        # End open watches first: the server's graceful shutdown would otherwise wait for them.
        await store.close()
        for task in (serving, upkeep):
            task.cancel()
        for task in (serving, upkeep):
            with contextlib.suppress(asyncio.CancelledError, Exception):  # a failure was already raised above
                await task
