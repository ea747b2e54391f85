"""Client of the controller's REST API (HTTPS; the cluster key as Bearer or Basic password).

API (errors are {"code", "message"}: 400 validation_error, 401 unauthorized, 404 not_found, 409 conflict):
  GET    /ping                                      no auth
  POST   /apps                    AppCreate         -> 201 App (also creates route http <name>.<domain>)
  GET    /apps                                      -> list[App] (by name)
  GET    /apps/{app}                                -> App          ({app} is an id or a name, everywhere)
  PATCH  /apps/{app}               AppUpdate         -> App: meta merged (null removes a key); `strategy`,
                                                       `stop_grace` and `redirect_https` (true|false) are
                                                       checked (400 naming the bad value); a change of
                                                       `redirect_https` makes a `route` event per http route
  DELETE /apps/{app}                                -> AppDeleted   (formations scaled to 0, routes and releases gone)
  POST   /keys                    KeyCreate         -> 201 Key (400 not an ssh public key; 409 exists)
  GET    /keys                                      -> list[Key]
  DELETE /keys/{fingerprint}                        -> 204
  POST   /artifacts               ArtifactCreate    -> 201 Artifact
  GET    /artifacts/{id}                            -> Artifact
  POST   /releases                ReleaseCreate     -> 201 Release (version = app's previous + 1)
  GET    /releases/{id}                             -> Release
  GET    /apps/{app}/releases                       -> list[Release], newest first
  GET    /apps/{app}/release                        -> the current Release (404 when none)
  POST   /apps/{app}/deploy       DeployRequest     -> Deployment, `pending`: the deployer runs the release phase,
                                                       makes the release current and moves the formation to it
                                                       (counts carried over, or `processes`) by the app's strategy;
                                                       follow its `deployment` events to `complete`/`failed`.
                                                       409 while another deployment of the app is in flight;
                                                       400 for the current release or another app's
  GET    /apps/{app}/deployments                    -> list[Deployment], newest first
  GET    /deployments/{id}                          -> Deployment
  PUT    /apps/{app}/formations/{release_id} FormationUpdate -> Formation
                                                       (400 `unknown process types: "foo"` for types not in the release;
                                                       409 while a deployment of the app is in flight)
  GET    /apps/{app}/formations                     -> list[Formation]
  GET    /apps/{app}/formations/{release_id}        -> Formation (404 when none)
  GET    /formations                                -> list[ExpandedFormation] with a non-zero count
  GET    /formations/{app_id}/{release_id}          -> ExpandedFormation
  GET    /apps/{app}/jobs[?all=true]                -> list[Job] (active ones unless all)
  GET    /jobs[?all=true]                           -> list[Job] across apps (the scheduler's view)
  POST   /apps/{app}/jobs         JobRun            -> 201 Job: a one-off job of the current release running `args`
                                                       (400 `App has no release, push first`, 400 empty command);
                                                       `attach: true` keeps its stdin for an attacher, `tty: true`
                                                       (with `size`: [rows, cols]) runs it on a pseudo-terminal
  GET    /apps/{app}/jobs/{job}/attach              websocket of encom.api.attach frames, proxied to the job's
                                                       host: output from the start, stdin, resize, signals, exit
                                                       (401 bad key, 404 unknown job or another app's)
  GET    /apps/{app}/jobs/{job}                     -> Job (`job`: an id or a unique prefix of 6+ characters)
  DELETE /apps/{app}/jobs/{job}                     -> Job: stopped (409 when not running); the scheduler replaces
                                                       a formation job, not a one-off
  PUT    /jobs/{job_id}           Job               -> Job (upsert; the scheduler reports states here)
  POST   /apps/{app}/routes       RouteCreate       -> 201 Route (409 `Duplicate route` or a taken tcp port;
                                                       400 naming the problem: bad domain or path, tcp port outside
                                                       the range, a path route before its domain's "/" route,
                                                       sticky/certificate on tcp, a certificate that does not parse,
                                                       match its key or cover the domain)
  GET    /apps/{app}/routes                         -> list[Route] (`redirect_https` from the app's meta)
  PATCH  /apps/{app}/routes/{route_id} RouteUpdate  -> Route: service, sticky, certificate + key (both "" remove
                                                       it) as given; a `route` event; 404 for another app's route
  DELETE /apps/{app}/routes/{route_id}              -> 204 (route_id may be "<type>/<uuid>" or "<uuid>"; a "/"
                                                       route goes only after its domain's path routes)
  GET    /routes                                    -> list[Route] across apps (the router's view)
  POST   /apps/{app}/drains       DrainCreate       -> 201 Drain (token "d.<uuid>"); 400 `unsupported drain URL
                                                       scheme "ftp": use syslog+tcp://, syslog+tls://, https:// or
                                                       http://`, 400 `drain URL has no host|no port|an invalid
                                                       port: …`; 409 `drain already exists` (same URL, same app).
                                                       A `drain` event (URL without its credentials)
  GET    /apps/{app}/drains                         -> list[Drain], oldest first (URLs as given, credentials too)
  DELETE /apps/{app}/drains/{drain}                 -> Drain removed (`drain`: its id or its URL, URL-encoded);
                                                       404 unknown; a `drain_deletion` event. Deleting the app
                                                       deletes its drains
  GET    /apps/{app}/log?lines=N[&process_type=T][&job_id=J]
                                              -> list[LogLine], oldest first (fan-in from every host; 404 for a
                                                 job not the app's)
  GET    /events/last                               -> {"id": N}: the newest event id (0 when none)
  GET    /events?app_id=&object_types=a,b&since_id=N  SSE of Event (SSE id = event id). With the Last-Event-ID
                                                       header (or since_id) the stored events after that id come
                                                       first, then live ones; without either, live ones only.
                                                       To act and then wait without a race: read /events/last,
                                                       act, then stream with since_id = that id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection

from encom.api import ndjson
from encom.api.client import ApiClient
from encom.api.errors import ApiError
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
    Event,
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
)
from encom.api.wsclient import Verify

FOLLOW_IDLE_TIMEOUT = 30.0


class ControllerClient(ApiClient):
    def __init__(self, url: str, key: str, verify: Verify = True, timeout: float = 30.0) -> None:
        super().__init__(url, key, verify=verify, timeout=timeout)

    # apps
    async def create_app(self, name: str) -> App:
        return await self.send_model("POST", App, "/apps", AppCreate(name=name))

    async def list_apps(self) -> list[App]:
        return await self.get_list(App, "/apps")

    async def get_app(self, app: str) -> App:
        return await self.get_model(App, f"/apps/{app}")

    async def update_app(self, app: str, meta: dict[str, str | None]) -> App:
        return await self.send_model("PATCH", App, f"/apps/{app}", AppUpdate(meta=meta))

    async def delete_app(self, app: str) -> AppDeleted:
        return await self.send_model("DELETE", AppDeleted, f"/apps/{app}")

    # keys
    async def add_key(self, key: str) -> Key:
        return await self.send_model("POST", Key, "/keys", KeyCreate(key=key))

    async def list_keys(self) -> list[Key]:
        return await self.get_list(Key, "/keys")

    async def remove_key(self, fingerprint: str) -> None:
        await self.request("DELETE", f"/keys/{quote(fingerprint, safe='')}")

    # artifacts and releases
    async def create_artifact(self, artifact: ArtifactCreate) -> Artifact:
        return await self.send_model("POST", Artifact, "/artifacts", artifact)

    async def get_artifact(self, artifact_id: str) -> Artifact:
        return await self.get_model(Artifact, f"/artifacts/{artifact_id}")

    async def create_release(self, release: ReleaseCreate) -> Release:
        return await self.send_model("POST", Release, "/releases", release)

    async def get_release(self, release_id: str) -> Release:
        return await self.get_model(Release, f"/releases/{release_id}")

    async def list_releases(self, app: str) -> list[Release]:
        return await self.get_list(Release, f"/apps/{app}/releases")

    async def current_release(self, app: str) -> Release | None:
        """The app's current release, None before its first; a missing app raises (404)."""
        found = await self.get_app(app)
        return None if found.release_id is None else await self.get_release(found.release_id)

    async def deploy(self, app: str, release_id: str, processes: dict[str, int] | None = None) -> Deployment:
        body = DeployRequest(release_id=release_id, processes=processes)
        return await self.send_model("POST", Deployment, f"/apps/{app}/deploy", body)

    async def get_deployment(self, deployment_id: str) -> Deployment:
        return await self.get_model(Deployment, f"/deployments/{deployment_id}")

    async def deploy_and_wait(
        self,
        app: str,
        release_id: str,
        processes: dict[str, int] | None = None,
        on_job: Callable[[Job], None] | None = None,
    ) -> Deployment:
        """Deploy and follow the deployment until it is `complete` or `failed` (the caller bounds the wait);
        `on_job` sees the app's job changes meanwhile."""
        since = await self.last_event_id()
        deployment = await self.deploy(app, release_id, processes)
        if deployment.status in ("complete", "failed"):
            return deployment
        async for event in self.events(deployment.app_id, ["deployment", "job"], last_event_id=since):
            if event.object_type == "job" and on_job is not None:
                on_job(Job.model_validate(event.data))
            elif event.object_type == "deployment" and event.object_id == deployment.id:
                deployment = Deployment.model_validate(event.data)
                if deployment.status in ("complete", "failed"):
                    return deployment
        raise ApiError("unavailable", "the controller closed its event stream during the deployment", 503)

    async def list_deployments(self, app: str) -> list[Deployment]:
        return await self.get_list(Deployment, f"/apps/{app}/deployments")

    # formations
    async def put_formation(self, app: str, release_id: str, processes: dict[str, int]) -> Formation:
        body = FormationUpdate(processes=processes)
        return await self.send_model("PUT", Formation, f"/apps/{app}/formations/{release_id}", body)

    async def get_formation(self, app: str, release_id: str) -> Formation | None:
        try:
            return await self.get_model(Formation, f"/apps/{app}/formations/{release_id}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_formations(self, app: str) -> list[Formation]:
        return await self.get_list(Formation, f"/apps/{app}/formations")

    async def active_formations(self) -> list[ExpandedFormation]:
        return await self.get_list(ExpandedFormation, "/formations")

    async def expanded_formation(self, app_id: str, release_id: str) -> ExpandedFormation:
        return await self.get_model(ExpandedFormation, f"/formations/{app_id}/{release_id}")

    # jobs
    async def list_jobs(self, app: str, include_ended: bool = False) -> list[Job]:
        params = {"all": "true"} if include_ended else None
        return await self.get_list(Job, f"/apps/{app}/jobs", params=params)

    async def run_job(
        self,
        app: str,
        args: list[str],
        attach: bool = False,
        tty: bool = False,
        size: tuple[int, int] | None = None,
        process_type: str | None = None,
    ) -> Job:
        body = JobRun(args=args, attach=attach, tty=tty, size=size, type=process_type)
        return await self.send_model("POST", Job, f"/apps/{app}/jobs", body)

    def attach_job(self, app: str, job: str) -> AbstractAsyncContextManager[ClientConnection]:
        """The job's attach websocket (frames: encom.api.attach); refused with the usual ApiErrors."""
        return self.websocket(f"/apps/{app}/jobs/{quote(job, safe='')}/attach")

    async def get_job(self, app: str, job: str) -> Job:
        return await self.get_model(Job, f"/apps/{app}/jobs/{quote(job, safe='')}")

    async def kill_job(self, app: str, job: str) -> Job:
        return await self.send_model("DELETE", Job, f"/apps/{app}/jobs/{quote(job, safe='')}")

    async def all_jobs(self, include_ended: bool = False) -> list[Job]:
        params = {"all": "true"} if include_ended else None
        return await self.get_list(Job, "/jobs", params=params)

    async def put_job(self, job: Job) -> Job:
        return await self.send_model("PUT", Job, f"/jobs/{job.id}", job)

    # routes
    async def create_route(self, app: str, route: RouteCreate) -> Route:
        return await self.send_model("POST", Route, f"/apps/{app}/routes", route)

    async def list_routes(self, app: str) -> list[Route]:
        return await self.get_list(Route, f"/apps/{app}/routes")

    async def all_routes(self) -> list[Route]:
        return await self.get_list(Route, "/routes")

    async def update_route(self, app: str, route_ref: str, update: RouteUpdate) -> Route:
        return await self.send_model("PATCH", Route, f"/apps/{app}/routes/{route_ref}", update)

    async def delete_route(self, app: str, route_id: str) -> None:
        await self.request("DELETE", f"/apps/{app}/routes/{route_id}")

    # log drains
    async def create_drain(self, app: str, url: str) -> Drain:
        return await self.send_model("POST", Drain, f"/apps/{app}/drains", DrainCreate(url=url))

    async def list_drains(self, app: str) -> list[Drain]:
        return await self.get_list(Drain, f"/apps/{app}/drains")

    async def delete_drain(self, app: str, drain: str) -> Drain:
        """`drain` is the drain's id or its URL."""
        return await self.send_model("DELETE", Drain, f"/apps/{app}/drains/{quote(drain, safe='')}")

    # logs and events
    async def app_log(
        self, app: str, lines: int = 100, process_type: str | None = None, job_id: str | None = None
    ) -> list[LogLine]:
        params: dict[str, Any] = {"lines": lines}
        if process_type is not None:
            params["process_type"] = process_type
        if job_id is not None:
            params["job_id"] = job_id
        return await self.get_list(LogLine, f"/apps/{app}/log", params=params)

    async def app_log_stream(
        self,
        app: str,
        lines: int = 100,
        process_type: str | None = None,
        job_id: str | None = None,
        follow: bool = False,
        since: datetime | None = None,
    ) -> AsyncIterator[LogLine | None]:
        """GET /apps/{app}/log/stream?lines=N[&process_type=T][&job_id=J][&follow=true[&since=T]] (NDJSON): the
        app's last N lines from every host, oldest first (400 lines outside 1-10000; 404 unknown app, or a job
        not the app's: `no job J in app A`). With follow, then `{"live":true}` (yielded as None) and every new
        line as it is written, of jobs started later too, from hosts that join later too, until the client
        leaves; an empty line (skipped) after 10 s without one. With since (and follow), the history is the
        last N lines written after that time: how a follower resumes."""
        params: dict[str, Any] = {"lines": lines, "follow": "true" if follow else "false"}
        if since is not None:
            params["since"] = since.isoformat()
        if process_type is not None:
            params["process_type"] = process_type
        if job_id is not None:
            params["job_id"] = job_id
        idle = FOLLOW_IDLE_TIMEOUT if follow else None  # the controller sends a keepalive every 10 s
        async for item in self.ndjson(f"/apps/{app}/log/stream", params=params, idle_timeout=idle):
            yield ndjson.log_item(item)

    async def last_event_id(self) -> int:
        return int((await self.get_json("/events/last"))["id"])

    async def events(
        self,
        app_id: str | None = None,
        object_types: list[str] | None = None,
        last_event_id: int | None = None,
    ) -> AsyncIterator[Event]:
        """Stored events after `last_event_id` (none when it is None), then live ones, until the server closes
        the stream."""
        params: dict[str, Any] = {}
        if app_id:
            params["app_id"] = app_id
        if object_types:
            params["object_types"] = ",".join(object_types)
        last = None if last_event_id is None else str(last_event_id)
        async for msg in self.sse("/events", params=params, last_event_id=last):
            yield Event.model_validate_json(msg.data)
