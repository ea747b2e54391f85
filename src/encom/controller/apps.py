"""Apps: create (with the default route), look up by id or name, delete (scaling everything down first).

Deleting an app removes its rows in one transaction, its past events with them (they carry its env, commands and
routes) but for the deletions its followers still need (`app_deletion`, `route_deletion`, `drain_deletion`,
`formation`). The `app_deletion` event then drives the removal of what other components keep (`purge.py`)."""

from __future__ import annotations

import math
import uuid

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from encom.api.errors import Conflict, NotFound, ValidationError
from encom.api.settings import Settings
from encom.api.types import (
    MAX_META_KEYS,
    MAX_STOP_GRACE,
    STRATEGIES,
    App,
    AppCreate,
    AppDeleted,
    AppUpdate,
    check_meta,
    utcnow,
)
from encom.controller import convert, drains, events, formations, routes
from encom.controller.models import AppRow, ArtifactRow, DeploymentRow, EventRow, FormationRow, JobRow, ReleaseRow

# What followers of the event log still need once an app is gone (the scheduler, the router, the purge).
KEPT_EVENTS = ("app_deletion", "route_deletion", "drain_deletion", "formation")


def find_app(session: Session, ref: str, *, lock: bool = False) -> AppRow:
    """An app by id or name. `lock` holds its row for the transaction (PostgreSQL; SQLite writers are serial)."""
    query = select(AppRow).where(or_(AppRow.id == ref, AppRow.name == ref))
    if lock:
        query = query.with_for_update()
    row = session.scalars(query).first()
    if row is None:
        raise NotFound(f'app "{ref}" not found')
    return row


def create_app(session: Session, settings: Settings, body: AppCreate) -> App:
    if session.scalar(select(AppRow.id).where(AppRow.name == body.name)) is not None:
        raise Conflict(f'app "{body.name}" already exists')
    row = AppRow(id=str(uuid.uuid4()), name=body.name, meta={})
    session.add(row)
    session.flush()
    app = convert.app(row)
    events.record(session, "app", row.id, app, row.id)
    try:
        routes.add_default_route(session, settings, row)
    except Conflict:
        raise Conflict(f'app "{body.name}" cannot get its route {body.name}.{settings.domain}: already taken') from None
    return app


def _check_stop_grace(value: str) -> None:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not 0 <= seconds <= MAX_STOP_GRACE:  # also false for nan
        raise ValidationError(f'stop_grace must be a number of seconds between 0 and {MAX_STOP_GRACE:g}, not "{value}"')


def _check_meta_entry(key: str, value: str) -> None:
    check_meta({key: value})
    if key == "strategy" and value not in STRATEGIES:
        raise ValidationError(f'unknown deploy strategy "{value}" (expected one of: {", ".join(STRATEGIES)})')
    if key == "stop_grace":
        _check_stop_grace(value)
    if key == routes.REDIRECT_HTTPS and value not in ("true", "false"):
        raise ValidationError(f'{routes.REDIRECT_HTTPS} must be "true" or "false", not "{value}"')


def update_app(session: Session, ref: str, body: AppUpdate) -> App:
    """Merge `body.meta` into the app's meta (None removes a key); all checked before anything is stored."""
    row = find_app(session, ref, lock=True)
    meta = dict(row.meta)
    for key, value in body.meta.items():
        if value is None:
            meta.pop(key, None)
        else:
            _check_meta_entry(key, value)
            meta[key] = value
    if len(meta) > MAX_META_KEYS:
        raise ValidationError(f"an app has at most {MAX_META_KEYS} meta keys")
    redirected = routes.redirects_https(row.meta)
    row.meta = meta
    row.updated_at = utcnow()
    session.flush()
    app = convert.app(row)
    events.record(session, "app", row.id, app, row.id)
    if routes.redirects_https(meta) != redirected:
        routes.record_http_routes(session, row)  # the router follows route events, not app events
    return app


def list_apps(session: Session) -> list[App]:
    return [convert.app(row) for row in session.scalars(select(AppRow).order_by(AppRow.name))]


def delete_app(session: Session, ref: str) -> AppDeleted:
    row = find_app(session, ref, lock=True)
    app = convert.app(row)
    formations.scale_app_to_zero(session, row)
    deleted_routes = routes.delete_app_routes(session, row)
    drains.delete_app_drains(session, row)
    session.execute(delete(FormationRow).where(FormationRow.app_id == row.id))
    session.execute(delete(DeploymentRow).where(DeploymentRow.app_id == row.id))
    releases = session.execute(select(ReleaseRow.id, ReleaseRow.artifact_id).where(ReleaseRow.app_id == row.id)).all()
    session.execute(delete(ReleaseRow).where(ReleaseRow.app_id == row.id))
    artifact_ids = {artifact for _, artifact in releases if artifact is not None}
    still_used = select(ReleaseRow.artifact_id).where(ReleaseRow.artifact_id.is_not(None))  # another app's release
    session.execute(delete(ArtifactRow).where(ArtifactRow.id.in_(artifact_ids), ArtifactRow.id.not_in(still_used)))
    session.delete(row)
    scrub_app_records(session, row.id)
    result = AppDeleted(app=app, deleted_routes=deleted_routes, deleted_releases=len(releases))
    events.record(session, "app_deletion", row.id, result, row.id)
    return result


def scrub_app_records(session: Session, app_id: str) -> None:
    """A deleted app's jobs and past events (but `KEPT_EVENTS`). Again after its hosts have stopped its jobs:
    their last state reports come after the deletion."""
    session.execute(delete(JobRow).where(JobRow.app_id == app_id))
    session.execute(delete(EventRow).where(EventRow.app_id == app_id, EventRow.object_type.not_in(KEPT_EVENTS)))
