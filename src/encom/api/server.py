"""Serving FastAPI apps inside encomd's single event loop (several servers, one loop, signals handled by encomd)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from pathlib import Path

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

from encom.api.auth import key_from_header, key_matches
from encom.api.errors import Unauthorized, install_error_handlers

OPENAPI_URL = "/openapi.json"


class DocsUnauthorized(Unauthorized):
    """A 401 from the docs, which asks a browser for the key (HTTP Basic, any user name)."""


def make_app(title: str, *keys: str) -> FastAPI:
    """A FastAPI app with encom's error format, a `/ping` that needs no auth, and `/docs`, `/redoc` and
    `/openapi.json` that need one of `keys` like the app's own routes."""
    if not any(keys):
        raise ValueError(f"{title}: the docs need a key")
    app = FastAPI(title=title, version="1", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    _add_docs(app, tuple(k for k in keys if k))

    @app.get("/ping", include_in_schema=False)
    async def ping() -> dict[str, str]:
        return {"status": "ok", "service": title}

    return app


def _add_docs(app: FastAPI, keys: tuple[str, ...]) -> None:
    def check(request: Request) -> None:
        if not key_matches(key_from_header(request.headers.get("authorization")), keys):
            raise DocsUnauthorized()

    async def on_unauthorized(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, DocsUnauthorized)
        challenge = f'Basic realm="encom {app.title}", Bearer'
        return JSONResponse(exc.to_json(), status_code=exc.status, headers={"WWW-Authenticate": challenge})

    app.add_exception_handler(DocsUnauthorized, on_unauthorized)
    docs = [Depends(check)]

    @app.get(OPENAPI_URL, include_in_schema=False, dependencies=docs)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=docs)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=OPENAPI_URL, title=f"{app.title} API")

    @app.get("/redoc", include_in_schema=False, dependencies=docs)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=OPENAPI_URL, title=f"{app.title} API")


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the process that embeds it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def stop(self) -> None:
        self.should_exit = True


def embedded_server(
    app: FastAPI,
    host: str,
    port: int,
    *,
    certfile: Path | None = None,
    keyfile: Path | None = None,
) -> EmbeddedServer:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        ssl_certfile=str(certfile) if certfile else None,
        ssl_keyfile=str(keyfile) if keyfile else None,
        timeout_graceful_shutdown=3,
        ws_max_size=1 << 20,  # websocket messages (attach frames are at most 64 KiB); uvicorn's default is 16 MiB
    )
    return EmbeddedServer(config)


async def run_server(server: EmbeddedServer, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled, then shut down gracefully. A failed bind raises instead of exiting the process."""
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                break
            await asyncio.sleep(0.01)
        if server.started and ready is not None:
            ready.set()
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await task
        raise
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        raise RuntimeError(f"{server.config.host}:{server.config.port}: server failed to start") from exc
    if not server.started:
        raise RuntimeError(f"{server.config.host}:{server.config.port}: server failed to start")
