"""Deployments: make a release current and move the formation to it.

A deployment is recorded, then carried out by its app's strategy. The only strategy today,
`all-at-once`, completes within the request: the new release's formation gets the counts, the old one
zero, and the scheduler does the rest from the formation events. A strategy that waits on job events
(one-by-one, health-gated) would leave the deployment `running` and finish it from a background task.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from encom.api.errors import Conflict, ValidationError
from encom.api.types import Deployment, DeployRequest, utcnow
from encom.controller import convert, events, formations, releases
from encom.controller.models import AppRow, DeploymentRow, FormationRow, ReleaseRow

IN_FLIGHT = ("pending", "running")


def _carried_counts(session: Session, app: AppRow, new: ReleaseRow) -> dict[str, int]:
    """The current formation's counts for the types the new release still has; zero for new types."""
    old = session.get(FormationRow, (app.id, app.release_id)) if app.release_id else None
    current = old.processes if old is not None else {}
    return {name: int(current.get(name, 0)) for name in new.processes}


def _set_current_release(session: Session, app: AppRow, release: ReleaseRow) -> None:
    previous = app.release_id
    app.release_id = release.id
    app.updated_at = utcnow()
    data = {"release": convert.release(release).model_dump(mode="json"), "prev_release_id": previous}
    events.record(session, "app_release", release.id, data, app.id)


def all_at_once(session: Session, app: AppRow, deployment: DeploymentRow) -> None:
    new = releases.release_row(session, deployment.new_release_id)
    _set_current_release(session, app, new)
    formations.put(session, app, new, deployment.processes)
    old_id = deployment.old_release_id
    if old_id and old_id != new.id:
        old = session.get(FormationRow, (app.id, old_id))
        old_release = session.get(ReleaseRow, old_id)
        if old is not None and old_release is not None:
            formations.put(session, app, old_release, {name: 0 for name in old.processes})
    deployment.status = "complete"
    deployment.finished_at = utcnow()


STRATEGIES: dict[str, Callable[[Session, AppRow, DeploymentRow], None]] = {"all-at-once": all_at_once}


def _release_of(session: Session, app: AppRow, release_id: str) -> ReleaseRow:
    """The release to deploy; one of another app is refused (400), the app keeping its current release."""
    release = releases.release_row(session, release_id)
    if release.app_id != app.id:
        raise ValidationError(f"release {release_id} belongs to another app")
    return release


def deploy(session: Session, app: AppRow, body: DeployRequest) -> Deployment:
    release = _release_of(session, app, body.release_id)
    in_flight = select(DeploymentRow.id).where(DeploymentRow.app_id == app.id, DeploymentRow.status.in_(IN_FLIGHT))
    if session.scalar(in_flight) is not None:
        raise Conflict("Cannot create deploy, one is already in progress")
    strategy = STRATEGIES.get(app.strategy)
    if strategy is None:
        raise ValidationError(f'unknown deploy strategy "{app.strategy}"')
    if body.processes is not None:
        formations.check_counts(release, body.processes)
    processes = body.processes if body.processes is not None else _carried_counts(session, app, release)
    row = DeploymentRow(
        id=str(uuid.uuid4()),
        app_id=app.id,
        old_release_id=app.release_id,
        new_release_id=release.id,
        strategy=app.strategy,
        status="pending",
        processes=processes,
        created_at=utcnow(),
    )
    session.add(row)
    strategy(session, app, row)
    session.flush()
    deployment = convert.deployment(row)
    events.record(session, "deployment", row.id, deployment, app.id)
    return deployment


def list_for_app(session: Session, app: AppRow) -> list[Deployment]:
    query = select(DeploymentRow).where(DeploymentRow.app_id == app.id).order_by(DeploymentRow.created_at.desc())
    return [convert.deployment(row) for row in session.scalars(query)]
