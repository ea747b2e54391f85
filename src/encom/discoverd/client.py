"""Client of discoverd's HTTP API (internal secret required).

API:
  PUT    /services/{service}/instances/{instance_id}   InstanceRegistration -> Instance  (register; repeat = heartbeat)
  DELETE /services/{service}/instances/{instance_id}                                    (deregister)
  GET    /services/{service}/instances                 -> list[Instance] (ordered by index)
  GET    /services/{service}/leader                    -> Instance (404 when none)
  GET    /services/{service}/watch                     SSE of ServiceEvent: one "up" per current instance, then
                                                        "current", then live "up"/"update"/"down"/"leader"
  GET    /services/{service}/meta                      -> ServiceMeta (404 when unset)
  PUT    /services/{service}/meta                      ServiceMeta -> ServiceMeta (409 when index is stale)
  GET    /services                                     -> list[str]
Instances expire TTL_SECONDS after their last heartbeat; clients heartbeat every HEARTBEAT_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from encom.api.client import ApiClient
from encom.api.errors import ApiError
from encom.api.types import Instance, InstanceRegistration, ServiceEvent, ServiceMeta

TTL_SECONDS = 10.0
HEARTBEAT_SECONDS = 3.0
HOST_SERVICE = "encom-host"  # every host agent registers here with meta {"id": host_id, "url": host_url}

log = logging.getLogger(__name__)


class DiscoverdClient(ApiClient):
    def __init__(self, url: str, secret: str) -> None:
        super().__init__(url, secret, timeout=10.0)

    async def register(self, service: str, instance_id: str, reg: InstanceRegistration) -> Instance:
        return await self.send_model("PUT", Instance, f"/services/{service}/instances/{instance_id}", reg)

    async def deregister(self, service: str, instance_id: str) -> None:
        with contextlib.suppress(ApiError):
            await self.request("DELETE", f"/services/{service}/instances/{instance_id}")

    async def instances(self, service: str) -> list[Instance]:
        return await self.get_list(Instance, f"/services/{service}/instances")

    async def leader(self, service: str) -> Instance | None:
        try:
            return await self.get_model(Instance, f"/services/{service}/leader")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def services(self) -> list[str]:
        data = await self.get_json("/services")
        return [str(s) for s in data]

    async def get_meta(self, service: str) -> ServiceMeta | None:
        try:
            return await self.get_model(ServiceMeta, f"/services/{service}/meta")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def set_meta(self, service: str, meta: ServiceMeta) -> ServiceMeta:
        return await self.send_model("PUT", ServiceMeta, f"/services/{service}/meta", meta)

    async def watch(self, service: str) -> AsyncIterator[ServiceEvent]:
        """One connection's events; ends when the server closes the stream."""
        async for msg in self.sse(f"/services/{service}/watch"):
            yield ServiceEvent.model_validate_json(msg.data)

    async def watch_forever(self, service: str, retry: float = 0.5) -> AsyncIterator[ServiceEvent]:
        """Events across reconnects. After each reconnect the server resends the current set then "current",
        so a consumer that rebuilds its view on "current" stays correct."""
        while True:
            try:
                async for event in self.watch(service):
                    yield event
            except ApiError as exc:
                log.debug("watch %s: %s; reconnecting", service, exc)
            await asyncio.sleep(retry)

    def heartbeat(self, service: str, instance_id: str, reg: InstanceRegistration) -> Heartbeat:
        return Heartbeat(self, service, instance_id, reg)


class Heartbeat:
    """Keeps one instance registered until stopped; `stop()` deregisters it."""

    def __init__(self, client: DiscoverdClient, service: str, instance_id: str, reg: InstanceRegistration):
        self.client = client
        self.service = service
        self.instance_id = instance_id
        self.reg = reg
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> Instance:
        """Register once (raising if that fails), then keep heartbeating in the background."""
        instance = await self.client.register(self.service, self.instance_id, self.reg)
        self._task = asyncio.create_task(self._loop(), name=f"heartbeat-{self.service}-{self.instance_id}")
        return instance

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.client.register(self.service, self.instance_id, self.reg)
            except ApiError as exc:
                log.warning("heartbeat %s/%s failed: %s", self.service, self.instance_id, exc)

    async def stop(self, deregister: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if deregister:
            await self.client.deregister(self.service, self.instance_id)
