"""One-off jobs (`encom run`) and killing jobs (`encom kill`): the controller asks a host directly.

A one-off job runs the given command in a container from the app's current release with its env and the limits
of one of its process types (`web` unless the request names another; encom's defaults when the release has no
web type), recorded as a job of type "" at once; the scheduler reports its later states like any job's. Killing
asks the job's host to stop it; the scheduler replaces a formation job that ended without it asking, not a one-off.
"""

from __future__ import annotations

import asyncio
import random
import shlex

from encom.api.errors import ApiError, Conflict, NotFound, ValidationError
from encom.api.jobspec import command_spec, controller_job
from encom.api.settings import Settings
from encom.api.types import ACTIVE_JOB_STATES, App, Artifact, Job, JobRun, Release, Resources
from encom.controller import apps, convert, jobs
from encom.controller.db import Database
from encom.controller.models import ArtifactRow, JobRow, ReleaseRow
from encom.discoverd.client import HOST_SERVICE, DiscoverdClient
from encom.host.client import HostClient, pick_host

MIN_PREFIX = 6  # a job may be named by a unique prefix of its id this long
LIMITS_TYPE = "web"  # whose limits a one-off job gets unless it names a type


def _current(db: Database, ref: str) -> tuple[App, Release, Artifact | None]:
    with db.read() as s:
        app = apps.find_app(s, ref)
        if app.release_id is None:
            raise ValidationError("App has no release, push first")
        release = s.get(ReleaseRow, app.release_id)
        assert release is not None
        artifact = s.get(ArtifactRow, release.artifact_id) if release.artifact_id else None
        return convert.app(app), convert.release(release), convert.artifact(artifact) if artifact else None


def _record(db: Database, job: Job) -> Job:
    with db.write() as s:
        return jobs.put(s, job.id, job)


def one_off_resources(release: Release, process_type: str | None) -> Resources:
    """The limits of `process_type` in the release (by default the web type's, or encom's defaults without one)."""
    if process_type is None:
        web = release.processes.get(LIMITS_TYPE)
        return web.resources if web is not None else Resources()
    process = release.processes.get(process_type)
    if process is None:
        known = ", ".join(sorted(release.processes)) or "none"
        raise ValidationError(f'no process type "{process_type}" in the current release (types: {known})')
    return process.resources


async def run(settings: Settings, db: Database, ref: str, body: JobRun) -> Job:
    if not body.args or not body.args[0]:
        raise ValidationError("run needs a command")
    app, release, artifact = await asyncio.to_thread(_current, db, ref)
    resources = one_off_resources(release, body.type)
    spec = command_spec(app, release, artifact, shlex.join(body.args), f"run.{random.randint(1000, 9999)}")
    spec = spec.model_copy(update={"resources": resources})
    if body.attach:
        spec = spec.model_copy(update={"stdin": True, "tty": body.tty, "size": body.size if body.tty else None})
    async with DiscoverdClient(settings.discoverd_url, settings.internal_secret) as discoverd:
        host = await pick_host(discoverd, settings.internal_secret, prefer=settings.host_id)
    async with host:
        host_job = await host.add_job(spec)
    return await asyncio.to_thread(_record, db, controller_job(host_job, 0))


def find_job(db: Database, ref: str, job_ref: str) -> Job:
    """A job of the app by id or unique id prefix (at least MIN_PREFIX characters)."""
    with db.read() as s:
        app = apps.find_app(s, ref)
        found = s.get(JobRow, job_ref)
        if found is not None and found.app_id == app.id:
            return convert.job(found)
        candidates = [j for j in jobs.list_jobs(s, app.id, True) if j.id.startswith(job_ref)]
        if len(job_ref) >= MIN_PREFIX and len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1 and len(job_ref) >= MIN_PREFIX:
            raise ValidationError(f'job "{job_ref}" is ambiguous in app "{app.name}"')
        raise NotFound(f'no job "{job_ref}" in app "{app.name}"')


async def _host_url(settings: Settings, host_id: str) -> str:
    async with DiscoverdClient(settings.discoverd_url, settings.internal_secret) as discoverd:
        instances = await discoverd.instances(HOST_SERVICE)
    for instance in instances:
        if instance.meta.get("id") == host_id and instance.meta.get("url"):
            return instance.meta["url"]
    raise ApiError("unavailable", f"host {host_id} of the job is not available", 503)


async def attach_target(settings: Settings, db: Database, ref: str, job_ref: str) -> tuple[Job, str]:
    """The app's job to attach to and its host's URL (404 unknown job or another app's, 409 never placed)."""
    job = await asyncio.to_thread(find_job, db, ref, job_ref)
    if job.host_id is None:
        raise Conflict(f"job {job.id} is not on a host ({job.state})")
    return job, await _host_url(settings, job.host_id)


async def kill(settings: Settings, db: Database, ref: str, job_ref: str) -> Job:
    job = await asyncio.to_thread(find_job, db, ref, job_ref)
    if job.state not in ACTIVE_JOB_STATES or job.host_id is None:
        raise Conflict(f"job {job.id} is not running ({job.state})")
    async with HostClient(await _host_url(settings, job.host_id), settings.internal_secret) as host:
        try:
            host_job = await host.stop_job(job.id)
        except ApiError as exc:
            if exc.status == 404:
                raise Conflict(f"job {job.id} is no longer on its host") from None
            raise
    return await asyncio.to_thread(_record, db, controller_job(host_job, job.restarts))
