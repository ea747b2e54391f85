"""What the scheduler sends to hosts (job specs) and to the controller (job records)."""

from __future__ import annotations

from datetime import datetime

from encom.api.jobspec import dyno_name, parse_dyno, process_spec
from encom.api.types import ExpandedFormation, HostJob, HostJobSpec, Job, utcnow

__all__ = ["controller_job", "dyno_name", "job_spec", "parse_dyno"]


def job_spec(formation: ExpandedFormation, process_type: str, index: int, job_id: str | None = None) -> HostJobSpec:
    """The host job for dyno `<process_type>.<index>` of a formation."""
    return process_spec(formation.app, formation.release, formation.artifact, process_type, index, job_id)


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
