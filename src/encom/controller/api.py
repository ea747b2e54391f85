"""The controller's REST API. The contract (paths, bodies, errors) is documented in `client.py`.

Handlers that touch the database are plain `def`s (FastAPI runs them in its thread pool); streaming and
fan-in handlers are async and reach the database through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response, WebSocket
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.responses import StreamingResponse

from encom.api.auth import require_key
from encom.api.errors import NotFound, ValidationError
from encom.api.server import error_responses as errors
from encom.api.server import make_app
from encom.api.settings import Settings
from encom.api.sse import SSEMessage, message, sse_response
from encom.api.types import (
    App,
    AppCreate,
    AppDeleted,
    AppUpdate,
    Artifact,
    ArtifactCreate,
    Deployment,
    DeployRequest,
    Drain,
    DrainCreate,
    EventType,
    ExpandedFormation,
    Formation,
    FormationUpdate,
    Job,
    JobRun,
    Key,
    KeyCreate,
    LogLine,
    Release,
    ReleaseCreate,
    Route,
    RouteCreate,
    RouteUpdate,
    shown,
)
from encom.controller import (
    apps,
    attach,
    convert,
    deployments,
    drains,
    formations,
    jobs,
    keys,
    limits,
    logs,
    oneoff,
    releases,
    routes,
)
from encom.controller.bodylimit import BodyLimit
from encom.controller.db import Database
from encom.controller.events import EventHub

EVENT_TYPES = frozenset(get_args(EventType))
MAX_EVENT_ID = (1 << 63) - 1
LogLines = Annotated[int, Query(ge=1, le=logs.MAX_LINES)]  # what logs.check_lines allows
EventId = Annotated[int, Query(ge=0, le=MAX_EVENT_ID)]


@dataclass
class Controller:
    settings: Settings
    db: Database
    hub: EventHub
    kick_deployer: Callable[[], None] = lambda: None  # wakes the deployer after a deployment is created


def create_api(ctl: Controller) -> FastAPI:
    app = make_app("controller", ctl.settings.cluster_key)
    app.add_middleware(BodyLimit)

    async def on_integrity_error(_: Request, exc: Exception) -> JSONResponse:
        # Only reachable when two writers race past the same uniqueness check (PostgreSQL).
        return JSONResponse({"code": "conflict", "message": "conflicts with an existing record"}, status_code=409)

    app.add_exception_handler(IntegrityError, on_integrity_error)
    router = APIRouter(dependencies=[Depends(require_key(ctl.settings.cluster_key))])
    for add in (_apps, _keys, _releases, _formations, _jobs, _routes, _drains, _logs, _events):
        add(router, ctl)
    app.include_router(router)
    _attach(app, ctl)
    return app


def _attach(app: FastAPI, ctl: Controller) -> None:
    """On the app, not the router: router dependencies do not run for websockets (attach.serve checks the key)."""

    @app.websocket("/apps/{app_ref}/jobs/{job_id}/attach")
    async def attach_job(ws: WebSocket, app_ref: str, job_id: str) -> None:
        await attach.serve(ws, ctl.settings, ctl.db, app_ref, job_id)


def _apps(router: APIRouter, ctl: Controller) -> None:
    db = ctl.db

    @router.post("/apps", status_code=201, responses=errors(409))
    def create_app(body: AppCreate) -> App:
        with db.write() as s:
            return apps.create_app(s, ctl.settings, body)

    @router.get("/apps")
    def list_apps() -> list[App]:
        with db.read() as s:
            return apps.list_apps(s)

    @router.get("/apps/{app}", responses=errors(404))
    def get_app(app: str) -> App:
        with db.read() as s:
            return convert.app(apps.find_app(s, app))

    @router.patch("/apps/{app}", responses=errors(404))
    def update_app(app: str, body: AppUpdate) -> App:
        with db.write() as s:
            return apps.update_app(s, app, body)

    @router.delete("/apps/{app}", responses=errors(404))
    def delete_app(app: str) -> AppDeleted:
        with db.write() as s:
            return apps.delete_app(s, app)


def _keys(router: APIRouter, ctl: Controller) -> None:
    db = ctl.db

    @router.post("/keys", status_code=201, responses=errors(409))
    def add_key(body: KeyCreate) -> Key:
        with db.write() as s:
            return keys.add_key(s, body.key)

    @router.get("/keys")
    def list_keys() -> list[Key]:
        with db.read() as s:
            return keys.list_keys(s)

    @router.delete("/keys/{fingerprint:path}", status_code=204, responses=errors(404))
    def remove_key(fingerprint: str) -> Response:
        with db.write() as s:
            keys.remove_key(s, fingerprint)
        return Response(status_code=204)


def _releases(router: APIRouter, ctl: Controller) -> None:
    db = ctl.db
    max_count = ctl.settings.max_processes_per_type

    @router.post("/artifacts", status_code=201)
    def create_artifact(body: ArtifactCreate) -> Artifact:
        with db.write() as s:
            return releases.create_artifact(s, body)

    @router.get("/artifacts/{artifact_id}", responses=errors(404))
    def get_artifact(artifact_id: str) -> Artifact:
        with db.read() as s:
            return convert.artifact(releases.artifact_row(s, artifact_id))

    @router.post("/releases", status_code=201, responses=errors(404))
    def create_release(body: ReleaseCreate) -> Release:
        body = limits.checked_release(body, limits.host_limits(ctl.settings.data_dir))
        with db.write() as s:
            app = apps.find_app(s, body.app_id, lock=True)
            return releases.create_release(s, app, body)

    @router.get("/releases/{release_id}", responses=errors(404))
    def get_release(release_id: str) -> Release:
        with db.read() as s:
            return convert.release(releases.release_row(s, release_id))

    @router.get("/apps/{app}/releases", responses=errors(404))
    def list_releases(app: str) -> list[Release]:
        with db.read() as s:
            return releases.list_releases(s, apps.find_app(s, app))

    @router.get("/apps/{app}/release", responses=errors(404))
    def current_release(app: str) -> Release:
        with db.read() as s:
            return releases.current_release(s, apps.find_app(s, app))

    @router.post("/apps/{app}/deploy", responses=errors(404, 409))
    def deploy(app: str, body: DeployRequest) -> Deployment:
        with db.write() as s:
            deployment = deployments.create(s, apps.find_app(s, app, lock=True), body, max_count)
        ctl.kick_deployer()
        return deployment

    @router.get("/deployments/{deployment_id}", responses=errors(404))
    def get_deployment(deployment_id: str) -> Deployment:
        with db.read() as s:
            return deployments.get(s, deployment_id)

    @router.get("/apps/{app}/deployments", responses=errors(404))
    def list_deployments(app: str) -> list[Deployment]:
        with db.read() as s:
            return deployments.list_for_app(s, apps.find_app(s, app))


def _formations(router: APIRouter, ctl: Controller) -> None:
    db = ctl.db
    max_count = ctl.settings.max_processes_per_type

    @router.put("/apps/{app}/formations/{release_id}", responses=errors(404, 409))
    def put_formation(app: str, release_id: str, body: FormationUpdate) -> Formation:
        with db.write() as s:
            row = apps.find_app(s, app, lock=True)
            release = releases.release_row(s, release_id, row)
            formations.check_counts(release, body.processes, max_count)
            deployments.refuse_if_in_flight(s, row, "scale")
            return formations.put(s, row, release, body.processes)

    @router.get("/apps/{app}/formations", responses=errors(404))
    def list_formations(app: str) -> list[Formation]:
        with db.read() as s:
            return formations.list_for_app(s, apps.find_app(s, app))

    @router.get("/apps/{app}/formations/{release_id}", responses=errors(404))
    def get_formation(app: str, release_id: str) -> Formation:
        with db.read() as s:
            return formations.get(s, apps.find_app(s, app), release_id)

    @router.get("/formations")
    def active_formations() -> list[ExpandedFormation]:
        with db.read() as s:
            return formations.active(s)

    @router.get("/formations/{app_id}/{release_id}", responses=errors(404))
    def expanded_formation(app_id: str, release_id: str) -> ExpandedFormation:
        with db.read() as s:
            return formations.expanded(s, apps.find_app(s, app_id).id, release_id)


def _jobs(router: APIRouter, ctl: Controller) -> None:
    db = ctl.db

    @router.get("/apps/{app}/jobs", responses=errors(404))
    def list_app_jobs(app: str, all: bool = False) -> list[Job]:
        with db.read() as s:
            return jobs.list_jobs(s, apps.find_app(s, app).id, all)

    @router.get("/jobs")
    def list_jobs(all: bool = False) -> list[Job]:
        with db.read() as s:
            return jobs.list_jobs(s, None, all)

    @router.post("/apps/{app}/jobs", status_code=201, responses=errors(404, 503))
    async def run_job(app: str, body: JobRun) -> Job:
        return await oneoff.run(ctl.settings, db, app, body)

    @router.get("/apps/{app}/jobs/{job_id}", responses=errors(404))
    def get_app_job(app: str, job_id: str) -> Job:
        return oneoff.find_job(db, app, job_id)

    @router.delete("/apps/{app}/jobs/{job_id}", responses=errors(404, 409, 503))
    async def kill_job(app: str, job_id: str) -> Job:
        return await oneoff.kill(ctl.settings, db, app, job_id)

    @router.put("/jobs/{job_id}")
    def put_job(job_id: str, body: Job) -> Job:
        with db.write() as s:
            return jobs.put(s, job_id, body)


def _routes(router: APIRouter, ctl: Controller) -> None:
    db = ctl.db

    @router.post("/apps/{app}/routes", status_code=201, responses=errors(404, 409))
    def create_route(app: str, body: RouteCreate) -> Route:
        with db.write() as s:
            return routes.create_route(s, ctl.settings, apps.find_app(s, app, lock=True), body)

    @router.get("/apps/{app}/routes", responses=errors(404))
    def list_app_routes(app: str) -> list[Route]:
        with db.read() as s:
            return routes.list_routes(s, apps.find_app(s, app).id)

    @router.patch("/apps/{app}/routes/{route_ref:path}", responses=errors(404))
    def update_route(app: str, route_ref: str, body: RouteUpdate) -> Route:
        with db.write() as s:
            return routes.update_route(s, apps.find_app(s, app, lock=True), route_ref, body)

    @router.delete("/apps/{app}/routes/{route_ref:path}", status_code=204, responses=errors(404))
    def delete_route(app: str, route_ref: str) -> Response:
        with db.write() as s:
            routes.delete_route(s, apps.find_app(s, app), route_ref)
        return Response(status_code=204)

    @router.get("/routes")
    def list_routes() -> list[Route]:
        with db.read() as s:
            return routes.list_routes(s)


def _drains(router: APIRouter, ctl: Controller) -> None:
    db = ctl.db

    @router.post("/apps/{app}/drains", status_code=201, responses=errors(404, 409))
    def create_drain(app: str, body: DrainCreate) -> Drain:
        with db.write() as s:
            return drains.create_drain(s, apps.find_app(s, app, lock=True), body)

    @router.get("/apps/{app}/drains", responses=errors(404))
    def list_drains(app: str) -> list[Drain]:
        with db.read() as s:
            return drains.list_drains(s, apps.find_app(s, app))

    @router.delete("/apps/{app}/drains/{drain_ref:path}", responses=errors(404))
    def delete_drain(app: str, drain_ref: str) -> Drain:
        with db.write() as s:
            return drains.delete_drain(s, apps.find_app(s, app, lock=True), drain_ref)


def _logs(router: APIRouter, ctl: Controller) -> None:
    @router.get("/apps/{app}/log", responses=errors(404, 503))
    async def app_log(
        app: str, lines: LogLines = 100, process_type: str | None = None, job_id: str | None = None
    ) -> list[LogLine]:
        app_id = await asyncio.to_thread(logs.log_target, ctl.db, app, job_id)
        return await logs.app_log(ctl.settings, app_id, lines, process_type, job_id)

    @router.get(
        "/apps/{app}/log/stream",
        response_class=StreamingResponse,
        responses=errors(404, 503) | stream_of("application/x-ndjson", "Log lines, one JSON object (a LogLine) a line"),
    )
    async def app_log_stream(
        app: str,
        lines: LogLines = 100,
        process_type: str | None = None,
        job_id: str | None = None,
        follow: bool = False,
        since: datetime | None = None,
    ) -> StreamingResponse:
        app_id = await asyncio.to_thread(logs.log_target, ctl.db, app, job_id)
        body = await logs.ndjson(
            ctl.settings, app_id, lines, process_type, job_id, follow, lambda: ctl.hub.closed, since
        )
        return StreamingResponse(body, media_type="application/x-ndjson")


def stream_of(media_type: str, description: str) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {media_type: {"schema": {"type": "string"}}}, "description": description}}


def _app_id(db: Database, ref: str) -> str:
    with db.read() as s:
        return apps.find_app(s, ref).id


def _event_filter(db: Database, app_id: str | None, object_types: str | None) -> tuple[str | None, list[str] | None]:
    """Resolve an app name to its id (a deleted app's id stays as given) and check the types."""
    if app_id:
        with contextlib.suppress(NotFound):
            app_id = _app_id(db, app_id)
    types = [t.strip() for t in object_types.split(",") if t.strip()] if object_types else None
    unknown = sorted(set(types or ()) - EVENT_TYPES)
    if unknown:
        raise ValidationError(f"unknown event types: {', '.join(unknown)}")
    return app_id or None, types


def _resume_point(header: str | None, since_id: int | None) -> int | None:
    """Where a stream starts: after the Last-Event-ID header (a reconnect), else after `since_id`."""
    if header is not None and header.strip():
        try:
            after = int(header)
        except ValueError:
            after = -1
        if not 0 <= after <= MAX_EVENT_ID:
            raise ValidationError(f"invalid Last-Event-ID {shown(header)}: expected an event id (0 or more)")
        return after
    return since_id


def _events(router: APIRouter, ctl: Controller) -> None:
    @router.get("/events/last")
    async def last_event() -> dict[str, Any]:
        return {"id": await ctl.hub.last_id()}

    @router.get(
        "/events",
        response_class=StreamingResponse,
        responses=stream_of("text/event-stream", "Server-sent events, each an Event in JSON, with its id"),
    )
    async def stream_events(
        app_id: str | None = None,
        object_types: str | None = None,
        since_id: EventId | None = None,
        last_event_id: str | None = Header(default=None),
    ) -> StreamingResponse:
        after = _resume_point(last_event_id, since_id)
        app, types = await asyncio.to_thread(_event_filter, ctl.db, app_id, object_types)

        async def messages() -> AsyncIterator[SSEMessage]:
            async for event in ctl.hub.stream(after, app, types):
                yield message(event, id=event.id)

        return sse_response(messages())
