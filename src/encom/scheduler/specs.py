"""What the scheduler sends to hosts (job specs) and to the controller (job records)."""

from __future__ import annotations

from datetime import UTC, datetime

from encom.api.jobspec import controller_job, dyno_name, parse_dyno, process_spec
from encom.api.types import ExpandedFormation, HostJobSpec, Job, JobState, utcnow

__all__ = ["controller_job", "dyno_name", "job_spec", "parse_dyno", "unplaced_job"]


def job_spec(formation: ExpandedFormation, process_type: str, index: int, job_id: str | None = None) -> HostJobSpec:
    """The host job for dyno `<process_type>.<index>` of a formation."""
    return process_spec(formation.app, formation.release, formation.artifact, process_type, index, job_id)


def unplaced_job(spec: HostJobSpec, created: float, restarts: int, state: JobState, reason: str) -> Job:
    """The controller's record of a job no host has taken: `pending` with the reason, or `down` once given up."""
    return Job(
        id=spec.id,
        app_id=spec.app_id,
        release_id=spec.release_id,
        type=spec.process_type,
        state=state,
        error=reason,
        restarts=restarts,
        created_at=datetime.fromtimestamp(created, UTC),
        updated_at=utcnow(),
    )
