"""Keeping an instance registered in discoverd even when discoverd is not reachable yet."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from encom.api.errors import ApiError
from encom.api.types import InstanceRegistration
from encom.discoverd.client import DiscoverdClient, Heartbeat

log = logging.getLogger(__name__)

RETRY_SECONDS = 0.5


class Registration:
    """Registers (retrying until discoverd answers), then heartbeats until stopped."""

    def __init__(self, client: DiscoverdClient, service: str, instance_id: str, reg: InstanceRegistration) -> None:
        self.heartbeat = Heartbeat(client, service, instance_id, reg)
        self.registered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._register(), name=f"register-{self.heartbeat.service}")

    async def _register(self) -> None:
        while True:
            try:
                await self.heartbeat.start()
            except ApiError as exc:
                log.debug("registering %s: %s; retrying", self.heartbeat.service, exc)
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self.registered.set()
            return

    async def stop(self, deregister: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.heartbeat.stop(deregister=deregister)
