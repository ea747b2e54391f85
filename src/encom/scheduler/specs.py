"""What the scheduler sends to hosts (job specs) and to the controller (job records)."""

from __future__ import annotations

import uuid
from datetime import datetime

from encom.api.types import (
    ExpandedFormation,
    HealthCheck,
    HostJob,
    HostJobSpec,
    Job,
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


def job_env(formation: ExpandedFormation, process_type: str, index: int, job_id: str) -> dict[str, str]:
    """Later entries win: encom's own variables, then the release env, then the process env (PORT: the host)."""
    process = formation.release.processes[process_type]
    env = {
        "DYNO": dyno_name(process_type, index),
        "ENCOM_APP_ID": formation.app.id,
        "ENCOM_APP_NAME": formation.app.name,
        "ENCOM_RELEASE_ID": formation.release.id,
        "ENCOM_PROCESS_TYPE": process_type,
        "ENCOM_JOB_ID": job_id,
    }
    env.update(formation.release.env)
    env.update(process.env)
    return env


def job_spec(formation: ExpandedFormation, process_type: str, index: int, job_id: str | None = None) -> HostJobSpec:
    """The host job for dyno `<process_type>.<index>` of a formation. Only web types get a service and a check."""
    job_id = job_id or new_job_id()
    process = formation.release.processes[process_type]
    web = is_web_type(process_type)
    return HostJobSpec(
        id=job_id,
        app_id=formation.app.id,
        app_name=formation.app.name,
        release_id=formation.release.id,
        process_type=process_type,
        dyno=dyno_name(process_type, index),
        artifact_url=formation.artifact.url if formation.artifact else None,
        cmd=process.cmd,
        env=job_env(formation, process_type, index, job_id),
        port=True,
        service=service_name(formation.app.name, process_type) if web else None,
        check=HealthCheck() if web else None,
        resources=process.resources,
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
