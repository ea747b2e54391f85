"""Client of the host agent's HTTP API (internal secret required).

API:
  GET    /host/status                         -> HostStatus
  PUT    /host/jobs/{job_id}   HostJobSpec    -> HostJob (state "starting"; 409 if the id exists; 400 bad spec)
  GET    /host/jobs[?all=true]                -> list[HostJob] (active jobs; with all=true also ended ones)
  GET    /host/jobs/{job_id}                  -> HostJob (404 unknown)
  DELETE /host/jobs/{job_id}                  -> HostJob (stop: deregister, SIGTERM, SIGKILL after stop_grace)
  DELETE /host/apps/{app_id}                -> 204: a deleted app's jobs are stopped (SIGKILL 2 s after SIGTERM) and
                                               everything the host kept of it goes: job records and logs, cached
                                               slugs, its uid's entry (the uid is never reused). Idempotent
  GET    /host/events                         SSE of HostJobEvent: the current state of every active job first,
                                               then each state change (starting, up, stopping, down, crashed, failed)
  GET    /host/jobs/{job_id}/log?lines=N&follow=bool
                                              NDJSON of LogLine; with follow, streams until the job has ended and
                                               its output is drained
  GET    /host/jobs/{job_id}/attach              websocket of encom.api.attach frames: the job's stdout/stderr bytes
                                               from the start, then EXIT; takes STDIN, STDIN_EOF, RESIZE, SIGNAL
                                               (stdin and resize only for jobs started with stdin/tty). One
                                               attacher at a time (a second gets an ERROR frame); 404 unknown job
  POST   /host/jobs/{job_id}/router-log  RouterLog -> 204: the router's access lines for requests the job served
                                               join its log as `router[web.1]: …` (404 unknown job)
  GET    /host/logs?app_id=...&lines=N[&process_type=T][&job_id=J]
                                              -> list[LogLine]: the last N lines of that app's jobs on this host,
                                               oldest first
  GET    /host/logs/follow?app_id=...&lines=N[&process_type=T][&job_id=J][&since=RFC3339]
                                              NDJSON: the same last N lines (only those after `since` when given),
                                               then `{"live":true}`, then each new line of the app's jobs as it is
                                               written (jobs started later included) until the host shuts down;
                                               an empty line after 10 s without one (a keepalive)
State meanings: "up" = the process runs and its health check (if any) passed, and it is registered in
discoverd; "down" = exited 0 or stopped on request; "crashed" = exited non-zero (exit_status set;
137 + error "out of memory" when OOM-killed); "failed" = could not start (error says why).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import datetime

from websockets.asyncio.client import ClientConnection

from encom.api import ndjson
from encom.api.client import ApiClient
from encom.api.errors import ApiError
from encom.api.types import (
    ENDED_JOB_STATES,
    HostJob,
    HostJobEvent,
    HostJobSpec,
    HostStatus,
    LogLine,
    RouterLog,
    RouterLogEntry,
)
from encom.discoverd.client import HOST_SERVICE, DiscoverdClient

FOLLOW_IDLE_TIMEOUT = 30.0  # the host sends a keepalive after 10 s of silence
PURGE_TIMEOUT = 120.0  # stopping a deleted app's jobs: a connection drain (10 s) and the kill grace each


class HostClient(ApiClient):
    def __init__(self, url: str, secret: str) -> None:
        super().__init__(url, secret, timeout=30.0)

    async def status(self) -> HostStatus:
        return await self.get_model(HostStatus, "/host/status")

    async def add_job(self, spec: HostJobSpec) -> HostJob:
        return await self.send_model("PUT", HostJob, f"/host/jobs/{spec.id}", spec)

    async def list_jobs(self, include_ended: bool = False) -> list[HostJob]:
        params = {"all": "true"} if include_ended else None
        return await self.get_list(HostJob, "/host/jobs", params=params)

    async def get_job(self, job_id: str) -> HostJob:
        return await self.get_model(HostJob, f"/host/jobs/{job_id}")

    async def wait_ended(self, job_id: str, poll: float = 0.2) -> HostJob:
        """The job's final state, polled (the caller bounds the wait)."""
        while True:
            job = await self.get_job(job_id)
            if job.state in ENDED_JOB_STATES:
                return job
            await asyncio.sleep(poll)

    async def stop_job(self, job_id: str) -> HostJob:
        return await self.send_model("DELETE", HostJob, f"/host/jobs/{job_id}")

    async def purge_app(self, app_id: str) -> None:
        """Remove everything this host kept of a deleted app (see the API above)."""
        await self.request("DELETE", f"/host/apps/{app_id}", timeout=PURGE_TIMEOUT)

    async def events(self) -> AsyncIterator[HostJobEvent]:
        async for msg in self.sse("/host/events"):
            yield HostJobEvent.model_validate_json(msg.data)

    async def job_log(self, job_id: str, lines: int = 100, follow: bool = False) -> AsyncIterator[LogLine]:
        params = {"lines": lines, "follow": "true" if follow else "false"}
        async for item in self.ndjson(f"/host/jobs/{job_id}/log", params=params):
            yield LogLine.model_validate(item)

    def attach(self, job_id: str) -> AbstractAsyncContextManager[ClientConnection]:
        """The job's attach websocket (see encom.api.attach for the frames)."""
        return self.websocket(f"/host/jobs/{job_id}/attach")

    async def add_router_log(self, job_id: str, lines: list[RouterLogEntry]) -> None:
        body = RouterLog(lines=lines).model_dump(mode="json")
        await self.request("POST", f"/host/jobs/{job_id}/router-log", json=body)

    async def app_log(
        self, app_id: str, lines: int = 100, process_type: str | None = None, job_id: str | None = None
    ) -> list[LogLine]:
        params = _log_params(app_id, lines, process_type, job_id)
        return await self.get_list(LogLine, "/host/logs", params=params)

    async def follow_app_log(
        self,
        app_id: str,
        lines: int = 100,
        process_type: str | None = None,
        job_id: str | None = None,
        since: datetime | None = None,
        idle_timeout: float = FOLLOW_IDLE_TIMEOUT,
    ) -> AsyncIterator[LogLine | None]:
        """The app's last lines, None at the end of that history, then its new lines until the host ends the
        stream. Raises ApiError (503) when nothing, not even a keepalive, came for `idle_timeout` seconds."""
        params = _log_params(app_id, lines, process_type, job_id)
        if since is not None:
            params["since"] = since.isoformat()
        async for item in self.ndjson("/host/logs/follow", params=params, idle_timeout=idle_timeout):
            yield ndjson.log_item(item)


def _log_params(app_id: str, lines: int, process_type: str | None, job_id: str | None) -> dict[str, str | int]:
    params: dict[str, str | int] = {"app_id": app_id, "lines": lines}
    if process_type is not None:
        params["process_type"] = process_type
    if job_id is not None:
        params["job_id"] = job_id
    return params


async def pick_host(discoverd: DiscoverdClient, secret: str, prefer: str | None = None) -> HostClient:
    """A client of a live host for a one-off job: `prefer` (a host id, usually this machine's) when it is
    registered, else one at random. 503 when no host is registered."""
    instances = await discoverd.instances(HOST_SERVICE)
    hosts = [(i.meta.get("id"), i.meta["url"]) for i in instances if i.meta.get("url")]
    if not hosts:
        raise ApiError("unavailable", "no host is available to run the job", 503)
    preferred = [url for host_id, url in hosts if host_id == prefer]
    url = preferred[0] if preferred else random.choice(hosts)[1]
    return HostClient(url, secret)
