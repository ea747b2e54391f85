"""Deployments as records: created `pending` by the API, carried out by the deployer (`deployer.py`).

Everything here is one database transaction at a time; the deployer strings them together. A deployment
remembers the old release's counts so that a failure can put them back exactly.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from encom.api.errors import Conflict, NotFound, ValidationError
from encom.api.types import RELEASE_TYPE, Deployment, DeploymentStatus, DeployRequest, is_web_type, utcnow
from encom.controller import convert, events, formations, releases
from encom.controller.models import AppRow, DeploymentRow, FormationRow, ReleaseRow

IN_FLIGHT = ("pending", "running")


def _counts(session: Session, app_id: str, release_id: str | None) -> dict[str, int]:
    row = session.get(FormationRow, (app_id, release_id)) if release_id else None
    return {name: int(count) for name, count in row.processes.items()} if row is not None else {}


def _carried_counts(old: dict[str, int], new: ReleaseRow) -> dict[str, int]:
    """The current formation's counts for the types the new release still has; zero for new types."""
    return {name: old.get(name, 0) for name in new.processes if name != RELEASE_TYPE}


def strategy_for(app: AppRow, processes: dict[str, int]) -> str:
    """The app's `strategy` meta, else one-by-one when a web type runs, else all-at-once."""
    chosen = app.meta.get("strategy")
    if chosen:
        return str(chosen)
    return "one-by-one" if any(is_web_type(name) and n > 0 for name, n in processes.items()) else "all-at-once"


def in_flight(session: Session, app_id: str) -> DeploymentRow | None:
    query = select(DeploymentRow).where(DeploymentRow.app_id == app_id, DeploymentRow.status.in_(IN_FLIGHT))
    return session.scalars(query).first()


def refuse_if_in_flight(session: Session, app: AppRow, action: str) -> None:
    running = in_flight(session, app.id)
    if running is not None:
        raise Conflict(f'cannot {action}: deployment {running.id} of app "{app.name}" is in progress')


def _release_of(session: Session, app: AppRow, release_id: str) -> ReleaseRow:
    """The release to deploy; one of another app is refused (400), the app keeping its current release."""
    release = releases.release_row(session, release_id)
    if release.app_id != app.id:
        raise ValidationError(f"release {release_id} belongs to another app")
    return release


def create(session: Session, app: AppRow, body: DeployRequest, max_count: int | None = None) -> Deployment:
    """Record a pending deployment (the deployer starts it); refused while another one is in flight. Counts
    given are checked against `max_count` (the cluster's max_processes_per_type)."""
    release = _release_of(session, app, body.release_id)
    if release.id == app.release_id:
        raise ValidationError(f"v{release.version} is already the current release; use scale to change counts")
    refuse_if_in_flight(session, app, "create deploy")
    if body.processes is not None:
        formations.check_counts(release, body.processes, max_count)
    old = _counts(session, app.id, app.release_id)
    processes = dict(body.processes) if body.processes is not None else _carried_counts(old, release)
    row = DeploymentRow(
        id=str(uuid.uuid4()),
        app_id=app.id,
        old_release_id=app.release_id,
        new_release_id=release.id,
        strategy=strategy_for(app, processes),
        status="pending",
        processes=processes,
        old_processes=old,
        created_at=utcnow(),
    )
    session.add(row)
    return _changed(session, row)


def _changed(session: Session, row: DeploymentRow) -> Deployment:
    session.flush()
    deployment = convert.deployment(row)
    events.record(session, "deployment", row.id, deployment, row.app_id)
    return deployment


def claim(session: Session, deployment_id: str) -> Deployment | None:
    """pending → running, by exactly one deployer (an atomic conditional update)."""
    claimed = session.execute(
        update(DeploymentRow)
        .where(DeploymentRow.id == deployment_id, DeploymentRow.status == "pending")
        .values(status="running")
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return None
    row = session.get(DeploymentRow, deployment_id)
    assert row is not None
    session.refresh(row)
    return _changed(session, row)


def ids_with_status(session: Session, status: DeploymentStatus) -> list[str]:
    query = select(DeploymentRow.id).where(DeploymentRow.status == status).order_by(DeploymentRow.created_at)
    return list(session.scalars(query))


def get_row(session: Session, deployment_id: str) -> DeploymentRow:
    row = session.get(DeploymentRow, deployment_id)
    if row is None:
        raise LookupError(f"deployment {deployment_id} is gone")
    return row


def set_release_job(session: Session, deployment_id: str, job_id: str) -> None:
    row = get_row(session, deployment_id)
    row.release_job_id = job_id
    _changed(session, row)


def set_current_release(session: Session, app: AppRow, release_id: str | None) -> None:
    """Make `release_id` the app's current release (None: no release), with an `app_release` event."""
    previous = app.release_id
    if previous == release_id:
        return
    app.release_id = release_id
    app.updated_at = utcnow()
    release = session.get(ReleaseRow, release_id) if release_id else None
    data = {"release": convert.release(release).model_dump(mode="json") if release else None}
    events.record(session, "app_release", release_id or app.id, data | {"prev_release_id": previous}, app.id)


def scale(session: Session, app_id: str, release_id: str, processes: dict[str, int]) -> None:
    """Set a release's formation counts (the deployer's steps); a deleted app or release is left alone."""
    app = session.get(AppRow, app_id)
    release = session.get(ReleaseRow, release_id)
    if app is not None and release is not None:
        formations.put(session, app, release, processes)


def finish(session: Session, deployment_id: str, status: DeploymentStatus, error: str | None = None) -> Deployment:
    row = get_row(session, deployment_id)
    row.status = status
    row.error = error
    row.finished_at = utcnow()
    return _changed(session, row)


def roll_back(session: Session, deployment_id: str) -> None:
    """Put things as they were: the new release's formation to zero, the old one's counts back, the old
    release current again."""
    row = get_row(session, deployment_id)
    app = session.get(AppRow, row.app_id)
    if app is None:
        return
    new = session.get(ReleaseRow, row.new_release_id)
    if new is not None and row.new_release_id != row.old_release_id:
        formations.put(session, app, new, dict.fromkeys(_counts(session, app.id, new.id) or new.processes, 0))
    old = session.get(ReleaseRow, row.old_release_id) if row.old_release_id else None
    if old is not None:
        formations.put(session, app, old, {t: n for t, n in row.old_processes.items() if t in old.processes})
    set_current_release(session, app, row.old_release_id)


def list_for_app(session: Session, app: AppRow) -> list[Deployment]:
    query = select(DeploymentRow).where(DeploymentRow.app_id == app.id).order_by(DeploymentRow.created_at.desc())
    return [convert.deployment(row) for row in session.scalars(query)]


def get(session: Session, deployment_id: str) -> Deployment:
    row = session.get(DeploymentRow, deployment_id)
    if row is None:
        raise NotFound(f'deployment "{deployment_id}" not found')
    return convert.deployment(row)
