"""The hosts the scheduler knows: one link (client + event-following task) per host registered in discoverd."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from encom.api.types import Instance
from encom.host.client import HostClient

# A host whose job list could not be read yet stops blocking scheduling after this long.
SYNC_GRACE = 10.0


@dataclass
class HostLink:
    id: str
    url: str
    client: HostClient
    added_at: float = field(default_factory=time.monotonic)
    synced: bool = False  # its job list has been read at least once
    synced_wall: float = 0.0  # wall-clock time the last job list was asked for
    task: asyncio.Task[None] | None = None

    @property
    def settled(self) -> bool:
        """Either synced, or given up on for gating purposes."""
        return self.synced or time.monotonic() - self.added_at > SYNC_GRACE

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        await self.client.aclose()


def host_of(instance: Instance) -> tuple[str, str] | None:
    """(host id, host API url) from an `encom-host` instance, or None when its meta lacks them."""
    host_id = instance.meta.get("id")
    url = instance.meta.get("url")
    if not host_id or not url:
        return None
    return host_id, url
