"""Host job specs for an app's processes, shared by the scheduler (formation jobs) and the controller
(one-off jobs such as the release phase)."""

from __future__ import annotations

import uuid
from datetime import datetime

from encom.api.types import (
    DEFAULT_STOP_GRACE,
    App,
    Artifact,
    HealthCheck,
    HostJob,
    HostJobSpec,
    Job,
    Release,
    is_web_type,
    service_name,
    utcnow,
)


def dyno_name(process_type: str, index: int) -> str:
    return f"{process_type}.{index}"


def parse_dyno(dyno: str) -> int | None:
    """The index of `web.3` (3), or None when the name carries none."""
    _, dot, number = dyno.rpartition(".")
    if not dot or not number.isdigit():
        return None
    index = int(number)
    return index if index > 0 else None


def new_job_id() -> str:
    return uuid.uuid4().hex


def stop_grace(app: App) -> float:
    """The app's `stop_grace` meta (validated when set), else the default 30 s."""
    try:
        return float(app.meta.get("stop_grace", DEFAULT_STOP_GRACE))
    except ValueError:
        return DEFAULT_STOP_GRACE


def job_env(app: App, release: Release, process_type: str, dyno: str, job_id: str) -> dict[str, str]:
    """Later entries win: encom's own variables, then the release env, then the process env (PORT: the host)."""
    env = {
        "DYNO": dyno,
        "ENCOM_APP_ID": app.id,
        "ENCOM_APP_NAME": app.name,
        "ENCOM_RELEASE_ID": release.id,
        "ENCOM_PROCESS_TYPE": process_type,
        "ENCOM_JOB_ID": job_id,
    }
    env.update(release.env)
    process = release.processes.get(process_type)
    if process is not None:
        env.update(process.env)
    return env


def process_spec(
    app: App, release: Release, artifact: Artifact | None, process_type: str, index: int, job_id: str | None = None
) -> HostJobSpec:
    """The host job for dyno `<process_type>.<index>`. Only web types get a service and a health check (the
    release's, from app.json, or a TCP check)."""
    job_id = job_id or new_job_id()
    process = release.processes[process_type]
    web = is_web_type(process_type)
    dyno = dyno_name(process_type, index)
    return HostJobSpec(
        id=job_id,
        app_id=app.id,
        app_name=app.name,
        release_id=release.id,
        process_type=process_type,
        dyno=dyno,
        artifact_url=artifact.url if artifact else None,
        cmd=process.cmd,
        env=job_env(app, release, process_type, dyno, job_id),
        port=True,
        service=service_name(app.name, process_type) if web else None,
        check=(process.check or HealthCheck()) if web else None,
        resources=process.resources,
        stop_grace=stop_grace(app),
    )


def one_off_spec(
    app: App, release: Release, artifact: Artifact | None, process_type: str, dyno: str, job_id: str | None = None
) -> HostJobSpec:
    """A one-off job running a process type's command once (process_type "" on the host, so no scheduler
    adopts it as a formation job). It gets a PORT like any dyno but no service and no check."""
    spec = command_spec(app, release, artifact, release.processes[process_type].cmd, dyno, job_id)
    process = release.processes[process_type]
    env = job_env(app, release, process_type, dyno, spec.id)
    return spec.model_copy(update={"env": env, "resources": process.resources})


def command_spec(
    app: App, release: Release, artifact: Artifact | None, cmd: str, dyno: str, job_id: str | None = None
) -> HostJobSpec:
    """A one-off job running `cmd` (through the slug runner, like a Procfile command) with the release's env:
    `encom run`."""
    job_id = job_id or new_job_id()
    return HostJobSpec(
        id=job_id,
        app_id=app.id,
        app_name=app.name,
        release_id=release.id,
        dyno=dyno,
        artifact_url=artifact.url if artifact else None,
        cmd=cmd,
        env=job_env(app, release, "", dyno, job_id),
        port=True,
        stop_grace=stop_grace(app),
    )


def controller_job(host_job: HostJob, restarts: int, updated_at: datetime | None = None) -> Job:
    """The controller's record of a host job."""
    spec = host_job.spec
    return Job(
        id=spec.id,
        app_id=spec.app_id,
        release_id=spec.release_id,
        type=spec.process_type,
        host_id=host_job.host_id,
        state=host_job.state,
        port=host_job.port,
        exit_status=host_job.exit_status,
        error=host_job.error,
        restarts=restarts,
        created_at=host_job.created_at,
        updated_at=updated_at or utcnow(),
    )
