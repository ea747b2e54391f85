"""Server-Sent Events: the server side (a streaming response with keep-alives) and the client side (parsing)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.responses import StreamingResponse

KEEPALIVE_SECONDS = 15.0


@dataclass
class SSEMessage:
    data: str
    event: str = "message"
    id: str | None = None

    def encode(self) -> bytes:
        lines = []
        if self.id is not None:
            lines.append(f"id: {self.id}")
        if self.event != "message":
            lines.append(f"event: {self.event}")
        lines.extend(f"data: {part}" for part in self.data.split("\n"))
        return ("\n".join(lines) + "\n\n").encode()

    def json(self) -> Any:
        return json.loads(self.data)


def message(payload: BaseModel | dict[str, Any], event: str = "message", id: str | int | None = None) -> SSEMessage:
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload, default=str)
    return SSEMessage(data=data, event=event, id=None if id is None else str(id))


async def _with_keepalives(source: AsyncIterator[SSEMessage]) -> AsyncIterator[bytes]:
    yield b": connected\n\n"  # flush headers at once so clients know the stream is open
    iterator = aiter(source)
    pending: asyncio.Task[SSEMessage] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_SECONDS)
            if not done:
                yield b": keepalive\n\n"
                continue
            try:
                msg = pending.result()
            except StopAsyncIteration:
                return
            pending = None
            yield msg.encode()
    finally:
        if pending is not None and not pending.done():
            # Cancelling the running __anext__ throws CancelledError into the generator, which ends it;
            # aclose() now would fail with "asynchronous generator is already running".
            pending.cancel()
        else:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()


def sse_response(source: AsyncIterator[SSEMessage]) -> StreamingResponse:
    return StreamingResponse(
        _with_keepalives(source),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[SSEMessage]:
    """Turn a stream of text lines into SSE messages (comments and keep-alives skipped)."""
    data: list[str] = []
    event = "message"
    id_: str | None = None
    async for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield SSEMessage(data="\n".join(data), event=event, id=id_)
            data, event, id_ = [], "message", None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
        elif field == "id":
            id_ = value
