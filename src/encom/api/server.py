"""Serving FastAPI apps inside encomd's single event loop (several servers, one loop, signals handled by encomd)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from encom.api.errors import install_error_handlers


def make_app(title: str) -> FastAPI:
    """A FastAPI app with encom's error format and a `/ping` that needs no auth."""
    app = FastAPI(title=title, version="1")
    install_error_handlers(app)

    @app.get("/ping", include_in_schema=False)
    async def ping() -> dict[str, str]:
        return {"status": "ok", "service": title}

    return app


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
