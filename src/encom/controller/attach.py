"""`GET /apps/{app}/jobs/{job}/attach`: the client's websocket proxied, frame for frame, to the job's host. The
host checks every frame; here only the size is (so nothing huge is carried on)."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import WebSocket
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from encom.api import attach
from encom.api.errors import ApiError
from encom.api.settings import Settings
from encom.api.wsserver import check_key, refuse
from encom.controller import oneoff
from encom.controller.db import Database
from encom.host.client import HostClient


async def serve(ws: WebSocket, settings: Settings, db: Database, app: str, job_ref: str) -> None:
    try:
        check_key(ws, settings.cluster_key)
        job, host_url = await oneoff.attach_target(settings, db, app, job_ref)
        async with HostClient(host_url, settings.internal_secret) as host, host.attach(job.id) as upstream:
            await ws.accept()
            await _proxy(ws, upstream)
    except ApiError as exc:
        await refuse(ws, exc)


async def _proxy(ws: WebSocket, upstream: ClientConnection) -> None:
    down = asyncio.create_task(_to_client(ws, upstream))
    up = asyncio.create_task(_to_host(ws, upstream))
    try:
        await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (down, up):
            task.cancel()
        await asyncio.gather(down, up, return_exceptions=True)
    if down.done() and not down.cancelled():  # the host ended the session: so does the client's
        with contextlib.suppress(RuntimeError, OSError):
            await ws.close()


async def _to_client(ws: WebSocket, upstream: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in upstream:
            await ws.send_bytes(message if isinstance(message, bytes) else message.encode())


async def _to_host(ws: WebSocket, upstream: ClientConnection) -> None:
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data is None:
            data = str(message.get("text") or "").encode()
        if len(data) > attach.MAX_MESSAGE:
            await ws.send_bytes(attach.error(f"frame larger than {attach.MAX_DATA} bytes"))
            continue
        with contextlib.suppress(ConnectionClosed):
            await upstream.send(data)
