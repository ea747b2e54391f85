"""Websocket connections of the API clients: the same key and TLS trust as their HTTP requests, and a refused
handshake raised as the ApiError its HTTP response carries."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from encom.api.auth import bearer
from encom.api.errors import ApiError, error_from_body

Verify = ssl.SSLContext | bool
MAX_MESSAGE = 1 << 20
OPEN_TIMEOUT = 10.0


def ws_url(base_url: str, path: str) -> str:
    scheme, sep, rest = base_url.rstrip("/").partition("://")
    if not sep or scheme not in ("http", "https"):
        raise ApiError("validation_error", f"not an http(s) URL: {base_url}", 400)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{path}"


def _ssl(url: str, verify: Verify) -> ssl.SSLContext | None:
    if not url.startswith("wss://"):
        return None
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify:
        return ssl.create_default_context()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _refused(exc: InvalidStatus) -> ApiError:
    response = exc.response
    return error_from_body(response.status_code, response.body or b"", response.reason_phrase)


@asynccontextmanager
async def websocket(base_url: str, path: str, key: str | None, verify: Verify) -> AsyncIterator[ClientConnection]:
    url = ws_url(base_url, path)
    try:
        conn = await connect(
            url,
            additional_headers=bearer(key) if key else None,
            ssl=_ssl(url, verify),
            max_size=MAX_MESSAGE,
            open_timeout=OPEN_TIMEOUT,
            compression=None,
        )
    except InvalidStatus as exc:
        raise _refused(exc) from None
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        raise ApiError("unavailable", f"cannot reach {base_url}: {exc}", 503) from exc
    try:
        yield conn
    finally:
        await conn.close()
