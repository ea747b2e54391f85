"""Serving FastAPI apps inside encomd's single event loop (several servers, one loop, signals handled by encomd)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match

from encom.api.auth import key_from_header, key_matches
from encom.api.errors import STATUS_BY_CODE, Unauthorized, install_error_handlers

OPENAPI_URL = "/openapi.json"
ERROR_SCHEMA = "Error"
CODE_BY_STATUS = {status: code for code, status in STATUS_BY_CODE.items()} | {405: "method_not_allowed"}
ERROR_DESCRIPTIONS = {
    400: "Invalid request: a parameter or the body breaks a rule, which the message names",
    401: "Missing or wrong key",
    404: "Not found: the message names what",
    409: "Conflicts with the current state (it exists already, or a deployment is in progress)",
    503: "A component this needs cannot be reached or has no capacity (e.g. no host)",
}


class Error(BaseModel):
    """Every error response's body."""

    code: str
    message: str


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for error statuses a route returns (400 and 401 are added to every route)."""
    return {status: {"model": Error, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


class EncomAPI(FastAPI):
    """FastAPI whose OpenAPI says what encom's servers really answer: errors are `Error` bodies, an invalid
    request is a 400 (not FastAPI's 422), and every route needs the key (HTTP Bearer, or Basic with the key as
    password)."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            _document_errors(super().openapi())
        assert self.openapi_schema is not None
        return self.openapi_schema


def _document_errors(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas[ERROR_SCHEMA] = Error.model_json_schema()
    ref = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}

    def error(status: int) -> dict[str, Any]:
        return {"description": ERROR_DESCRIPTIONS[status], "content": {"application/json": {"schema": ref}}}

    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", error(400))
            responses.setdefault("401", error(401))
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"},
        "basic": {"type": "http", "scheme": "basic", "description": "any user name, the key as password"},
    }
    schema["security"] = [{"bearer": []}, {"basic": []}]


class DocsUnauthorized(Unauthorized):
    """A 401 from the docs, which asks a browser for the key (HTTP Basic, any user name)."""


def make_app(title: str, *keys: str) -> FastAPI:
    """A FastAPI app with encom's error format, a `/ping` that needs no auth, and `/docs`, `/redoc` and
    `/openapi.json` that need one of `keys` like the app's own routes."""
    if not any(keys):
        raise ValueError(f"{title}: the docs need a key")
    app = EncomAPI(title=title, version="1", docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)
    _http_errors(app)
    _add_docs(app, tuple(k for k in keys if k))

    @app.get("/ping", include_in_schema=False)
    async def ping() -> dict[str, str]:
        return {"status": "ok", "service": title}

    return app


def _http_errors(app: FastAPI) -> None:
    """Starlette's own errors (no such path, method not allowed) in encom's format; a 405's `Allow` lists every
    method of the path, not only those of the first route that matched it."""

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
        code = CODE_BY_STATUS.get(exc.status_code, "http_error")
        return JSONResponse({"code": code, "message": str(exc.detail)}, status_code=exc.status_code, headers=headers)

    app.add_exception_handler(HTTPException, on_http_error)


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


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
