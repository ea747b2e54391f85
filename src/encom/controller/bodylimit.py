"""A cap on request bodies: the API's JSON bodies are small (a release's env is at most 256 KiB), so a larger
body is refused with a 400 before it is read into memory."""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY = 4 << 20
DRAIN_MAX = 64 << 20  # bytes of a refused body read (and dropped) before the connection is simply closed


class BodyLimit:
    """ASGI middleware: bodies over `limit` bytes (declared or streamed) get a 400 `validation_error`."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        body = await self._read(receive, _content_length(scope))
        if body is None:
            await self._refuse(send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Receive, declared: int | None) -> bytes | None:
        """The whole body, or None once it passes the limit: the rest is then read and dropped (up to
        DRAIN_MAX, so the client gets the answer rather than a reset) and never kept."""
        chunks: list[bytes] = []
        size = 0
        keep = declared is None or declared <= self.limit
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks) if keep else None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                keep = False
                chunks.clear()
            if keep:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks) if keep else None
            if size > self.limit + DRAIN_MAX:
                return None

    async def _refuse(self, send: Send) -> None:
        text = f"the request body is larger than {self.limit} bytes ({self.limit >> 20} MiB), the API's limit"
        payload = json.dumps({"code": "validation_error", "message": text}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 400, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            message: dict[str, Any] = {"type": "http.request", "body": body, "more_body": False}
            return message
        return await receive()  # after the body: a disconnect, when the client goes

    return replay
