"""Jobs as the scheduler reports them."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from encom.api.errors import ValidationError
from encom.api.types import ACTIVE_JOB_STATES, Job
from encom.controller import convert, events
from encom.controller.models import JobRow

FIELDS = ("app_id", "release_id", "type", "host_id", "state", "port", "exit_status", "error", "restarts", "updated_at")


def put(session: Session, job_id: str, job: Job) -> Job:
    """Insert or update; `created_at` stays what it was first reported as."""
    if job.id != job_id:
        raise ValidationError(f'job id "{job.id}" does not match the URL ("{job_id}")')
    row = session.get(JobRow, job_id)
    if row is None:
        row = JobRow(id=job_id, created_at=job.created_at)
        session.add(row)
    for name in FIELDS:
        setattr(row, name, getattr(job, name))
    session.flush()
    stored = convert.job(row)
    events.record(session, "job", job_id, stored, stored.app_id)
    return stored


def list_jobs(session: Session, app_id: str | None, include_ended: bool) -> list[Job]:
    query = select(JobRow).order_by(JobRow.created_at, JobRow.id)
    if app_id is not None:
        query = query.where(JobRow.app_id == app_id)
    if not include_ended:
        query = query.where(JobRow.state.in_(ACTIVE_JOB_STATES))
    return [convert.job(row) for row in session.scalars(query)]
