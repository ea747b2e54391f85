"""The base HTTP client every component's client builds on: auth, TLS, error mapping, JSON models, SSE."""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter
from websockets.asyncio.client import ClientConnection

from encom.api import wsclient
from encom.api.auth import bearer
from encom.api.errors import ApiError, error_from_body
from encom.api.sse import SSEMessage, parse_sse
from encom.api.wsclient import Verify

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def ca_context(ca_file: Path) -> ssl.SSLContext:
    """Trust only the cluster's CA (internal components talking to the controller)."""
    return ssl.create_default_context(cafile=str(ca_file))


def pinned_context(cert_pem: str) -> ssl.SSLContext:
    """Trust exactly one certificate, already checked against its pin (the CLI)."""
    ctx = ssl.create_default_context(cadata=cert_pem)
    ctx.check_hostname = False
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


def cert_pin(der: bytes) -> str:
    """The TLS pin format of `encom cluster add -p`: base64 of the certificate's SHA-256."""
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def error_from_response(response: httpx.Response) -> ApiError:
    return error_from_body(response.status_code, response.content, response.reason_phrase)


class ApiClient:
    """An async JSON client for one encom API."""

    def __init__(self, base_url: str, key: str | None = None, *, verify: Verify = True, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = key
        self._verify = verify
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=bearer(key) if key else {},
            verify=verify,
            timeout=httpx.Timeout(timeout, connect=5.0),
        )

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError("unavailable", f"cannot reach {self.base_url}: {exc}", 503) from exc
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    async def get_json(self, path: str, **kwargs: Any) -> Any:
        return (await self.request("GET", path, **kwargs)).json()

    async def get_model(self, model: type[M], path: str, **kwargs: Any) -> M:
        return model.model_validate((await self.request("GET", path, **kwargs)).json())

    async def get_list(self, model: type[M], path: str, **kwargs: Any) -> list[M]:
        data = (await self.request("GET", path, **kwargs)).json()
        return TypeAdapter(list[model]).validate_python(data)  # type: ignore[valid-type]

    async def send_model(self, method: str, model: type[M], path: str, body: Any = None, **kwargs: Any) -> M:
        if isinstance(body, BaseModel):
            kwargs["content"] = body.model_dump_json()
            kwargs.setdefault("headers", {})["Content-Type"] = "application/json"
        elif body is not None:
            kwargs["json"] = body
        return model.model_validate((await self.request(method, path, **kwargs)).json())

    def websocket(self, path: str) -> AbstractAsyncContextManager[ClientConnection]:
        """A websocket to `path` with this client's key and TLS trust (a refused handshake raises ApiError)."""
        return wsclient.websocket(self.base_url, path, self._key, self._verify)

    @asynccontextmanager
    async def stream(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """A streaming request; errors raise before the body is read. No read timeout (long-lived)."""
        kwargs.setdefault("timeout", httpx.Timeout(None, connect=5.0))
        try:
            async with self.http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_from_response(response)
                yield response
        except httpx.TransportError as exc:
            raise ApiError("unavailable", f"cannot reach {self.base_url}: {exc}", 503) from exc

    async def sse(
        self, path: str, params: dict[str, Any] | None = None, last_event_id: str | None = None
    ) -> AsyncIterator[SSEMessage]:
        """Follow an SSE stream until the server ends it."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        async with self.stream("GET", path, params=params, headers=headers) as response:
            async for msg in parse_sse(response.aiter_lines()):
                yield msg

    async def ndjson(
        self, path: str, params: dict[str, Any] | None = None, idle_timeout: float | None = None
    ) -> AsyncIterator[Any]:
        """Follow a newline-delimited JSON stream; with `idle_timeout`, a stream silent that long (not even a
        keepalive line) is lost: ApiError 503."""
        timeout = httpx.Timeout(None, connect=5.0, read=idle_timeout)
        async with self.stream("GET", path, params=params, timeout=timeout) as response:
            async for line in response.aiter_lines():
                if line.strip():
                    yield json.loads(line)
