"""discoverd's HTTP API (the contract is in `encom.discoverd.client`); all state lives in a `Store`."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, Response
from starlette.responses import StreamingResponse

from encom.api.auth import require_key
from encom.api.errors import NotFound, ValidationError
from encom.api.server import make_app
from encom.api.sse import SSEMessage, message, sse_response
from encom.api.types import Instance, InstanceRegistration, ServiceMeta
from encom.discoverd.store import Store

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def checked_name(kind: str, value: str) -> str:
    if not NAME_RE.match(value):
        raise ValidationError(
            f"invalid {kind} {value!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def create_app(store: Store, secret: str) -> FastAPI:
    app = make_app("discoverd", secret)
    router = APIRouter(dependencies=[Depends(require_key(secret))])

    @router.get("/services")
    async def list_services() -> list[str]:
        return await store.services()

    @router.put("/services/{service}/instances/{instance_id}")
    async def register(service: str, instance_id: str, reg: InstanceRegistration) -> Instance:
        return await store.register(checked_name("service", service), checked_name("instance id", instance_id), reg)

    @router.delete("/services/{service}/instances/{instance_id}", status_code=204)
    async def deregister(service: str, instance_id: str) -> Response:
        if not await store.deregister(service, instance_id):
            raise NotFound(f"instance {instance_id} of {service} is not registered")
        return Response(status_code=204)

    @router.get("/services/{service}/instances")
    async def instances(service: str) -> list[Instance]:
        return await store.instances(service)

    @router.get("/services/{service}/leader")
    async def leader(service: str) -> Instance:
        found = await store.leader(service)
        if found is None:
            raise NotFound(f"{service} has no live instance")
        return found

    @router.get("/services/{service}/watch")
    async def watch(service: str) -> StreamingResponse:
        return sse_response(_as_sse(store, checked_name("service", service)))

    @router.get("/services/{service}/meta")
    async def get_meta(service: str) -> ServiceMeta:
        meta = await store.get_meta(service)
        if meta is None:
            raise NotFound(f"{service} has no metadata")
        return meta

    @router.put("/services/{service}/meta")
    async def set_meta(service: str, meta: ServiceMeta) -> ServiceMeta:
        return await store.set_meta(checked_name("service", service), meta)

    app.include_router(router)
    return app


async def _as_sse(store: Store, service: str) -> AsyncIterator[SSEMessage]:
    events = store.watch(service)
    try:
        async for event in events:
            yield message(event, event=event.kind)
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
