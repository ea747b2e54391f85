"""The host agent's HTTP API (see encom.host.client for the contract)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from fastapi import APIRouter, Depends, FastAPI, WebSocket
from fastapi.responses import Response, StreamingResponse

from encom.api import ndjson
from encom.api.auth import require_key
from encom.api.errors import ApiError, ValidationError
from encom.api.server import make_app
from encom.api.sse import SSEMessage, message, sse_response
from encom.api.types import HostJob, HostJobEvent, HostJobSpec, HostStatus, LogLine, RouterLog
from encom.api.wsserver import check_key, refuse
from encom.host.jobs import JobManager
from encom.host.session import AttachSession

STOP_WAIT = 20.0  # DELETE answers once the job has ended or after this long (the client's timeout is 30 s)
MAX_LINES = 100_000


def _lines(lines: int) -> int:
    if lines < 0 or lines > MAX_LINES:
        raise ValidationError(f"lines must be between 0 and {MAX_LINES}")
    return lines


def build_app(jobs: JobManager, secret: str, url: str) -> FastAPI:
    app = make_app("encom-host", secret)
    router = APIRouter(prefix="/host", dependencies=[Depends(require_key(secret))])
    host_id = jobs.deps.host_id

    @router.get("/status")
    async def status() -> HostStatus:
        return HostStatus(id=host_id, url=url, jobs=len(jobs.active()))

    @router.put("/jobs/{job_id}")
    async def add_job(job_id: str, spec: HostJobSpec) -> HostJob:
        if spec.id != job_id:
            raise ValidationError(f"the spec's id {spec.id!r} does not match the URL's {job_id!r}")
        return jobs.add(spec)

    @router.get("/jobs")
    async def list_jobs(all: bool = False) -> list[HostJob]:
        return jobs.all() if all else jobs.active()

    @router.get("/jobs/{job_id}")
    async def get_job(job_id: str) -> HostJob:
        return jobs.runner(job_id).job

    @router.delete("/jobs/{job_id}")
    async def stop_job(job_id: str) -> HostJob:
        return await jobs.stop(job_id, STOP_WAIT)

    @router.delete("/apps/{app_id}", status_code=204)
    async def purge_app(app_id: str) -> Response:
        await jobs.purge_app(app_id)
        return Response(status_code=204)

    @router.get("/events")
    async def events() -> StreamingResponse:
        return sse_response(_events(jobs))

    @router.get("/jobs/{job_id}/log")
    async def job_log(job_id: str, lines: int = 100, follow: bool = False) -> StreamingResponse:
        source = jobs.job_log(job_id, _lines(lines), follow)
        return StreamingResponse(ndjson.lines(source), media_type="application/x-ndjson")

    @router.post("/jobs/{job_id}/router-log", status_code=204)
    async def router_log(job_id: str, body: RouterLog) -> Response:
        jobs.runner(job_id).add_router_lines(body.lines)
        return Response(status_code=204)

    @router.get("/logs")
    async def app_logs(
        app_id: str, lines: int = 100, process_type: str | None = None, job_id: str | None = None
    ) -> list[LogLine]:
        return jobs.app_log(app_id, _lines(lines), process_type, job_id)

    @router.get("/logs/follow")
    async def follow_app_logs(
        app_id: str,
        lines: int = 100,
        process_type: str | None = None,
        job_id: str | None = None,
        since: datetime | None = None,
    ) -> StreamingResponse:
        source = jobs.follow_app_log(app_id, _lines(lines), process_type, job_id, since)
        return StreamingResponse(ndjson.follow(source), media_type="application/x-ndjson")

    @app.websocket("/host/jobs/{job_id}/attach")
    async def attach_job(ws: WebSocket, job_id: str) -> None:
        try:
            check_key(ws, secret)
            runner = jobs.runner(job_id)
        except ApiError as exc:
            await refuse(ws, exc)
            return
        await AttachSession(ws, runner, jobs.deps.runc).run()

    app.include_router(router)
    return app


async def _events(jobs: JobManager) -> AsyncIterator[SSEMessage]:
    host_id = jobs.deps.host_id
    queue = jobs.deps.events.subscribe()  # before the snapshot, with no await between: nothing is missed
    try:
        for current in jobs.active():
            yield message(HostJobEvent(host_id=host_id, job=current))
        while (job := await queue.get()) is not None:
            yield message(HostJobEvent(host_id=host_id, job=job))
    finally:
        jobs.deps.events.unsubscribe(queue)
