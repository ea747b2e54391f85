"""Apps: create (with the default route), look up by id or name, delete (scaling everything down first)."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from encom.api.errors import Conflict, NotFound
from encom.api.settings import Settings
from encom.api.types import App, AppCreate, AppDeleted
from encom.controller import convert, events, formations, routes
from encom.controller.models import AppRow, DeploymentRow, FormationRow, ReleaseRow


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


def list_apps(session: Session) -> list[App]:
    return [convert.app(row) for row in session.scalars(select(AppRow).order_by(AppRow.name))]


def delete_app(session: Session, ref: str) -> AppDeleted:
    row = find_app(session, ref, lock=True)
    app = convert.app(row)
    formations.scale_app_to_zero(session, row)
    deleted_routes = routes.delete_app_routes(session, row)
    session.execute(delete(FormationRow).where(FormationRow.app_id == row.id))
    session.execute(delete(DeploymentRow).where(DeploymentRow.app_id == row.id))
    release_ids = list(session.scalars(select(ReleaseRow.id).where(ReleaseRow.app_id == row.id)))
    session.execute(delete(ReleaseRow).where(ReleaseRow.app_id == row.id))
    session.delete(row)
    result = AppDeleted(app=app, deleted_routes=deleted_routes, deleted_releases=len(release_ids))
    events.record(session, "app_deletion", row.id, result, row.id)
    return result
