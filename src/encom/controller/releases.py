"""Artifacts and releases (immutable, versioned per app)."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from encom.api.errors import NotFound, ValidationError
from encom.api.types import (
    Artifact,
    ArtifactCreate,
    Release,
    ReleaseCreate,
    check_artifact_url,
    check_command,
    check_meta,
    check_process_types,
    check_release_env,
    is_web_type,
)
from encom.controller import convert, events
from encom.controller.models import AppRow, ArtifactRow, ReleaseRow


def create_artifact(session: Session, body: ArtifactCreate) -> Artifact:
    check_artifact_url(body.url)
    check_meta(body.meta, "artifact meta")
    row = ArtifactRow(id=str(uuid.uuid4()), type=body.type, url=body.url, meta=dict(body.meta))
    session.add(row)
    session.flush()
    artifact = convert.artifact(row)
    events.record(session, "artifact", row.id, artifact, None)
    return artifact


def artifact_row(session: Session, artifact_id: str) -> ArtifactRow:
    row = session.get(ArtifactRow, artifact_id)
    if row is None:
        raise NotFound(f'artifact "{artifact_id}" not found')
    return row


def check_release(body: ReleaseCreate) -> None:
    """The input bounds of a release: process type names and commands, env, meta (nothing is stored otherwise)."""
    check_process_types(list(body.processes))
    for name, process in body.processes.items():
        check_command(process.cmd, name)
    check_release_env(body.env, {name: process.env for name, process in body.processes.items()})
    check_meta(body.meta, "release meta")


def create_release(session: Session, app: AppRow, body: ReleaseCreate) -> Release:
    check_release(body)
    if body.artifact_id is not None and session.get(ArtifactRow, body.artifact_id) is None:
        raise ValidationError(f'artifact "{body.artifact_id}" not found')
    unchecked = [name for name, p in body.processes.items() if p.check is not None and not is_web_type(name)]
    if unchecked:
        raise ValidationError(f'health checks apply to web process types only, not "{unchecked[0]}"')
    previous = session.scalar(select(func.max(ReleaseRow.version)).where(ReleaseRow.app_id == app.id))
    row = ReleaseRow(
        id=str(uuid.uuid4()),
        app_id=app.id,
        artifact_id=body.artifact_id,
        version=(previous or 0) + 1,
        env=dict(body.env),
        processes={name: p.model_dump(mode="json") for name, p in body.processes.items()},
        meta=dict(body.meta),
    )
    session.add(row)
    session.flush()
    release = convert.release(row)
    events.record(session, "release", row.id, release, app.id)
    return release


def release_row(session: Session, release_id: str, app: AppRow | None = None) -> ReleaseRow:
    """A release by id (of `app`, when given)."""
    row = session.get(ReleaseRow, release_id)
    if row is None or (app is not None and row.app_id != app.id):
        raise NotFound(f'release "{release_id}" not found')
    return row


def list_releases(session: Session, app: AppRow) -> list[Release]:
    query = select(ReleaseRow).where(ReleaseRow.app_id == app.id).order_by(ReleaseRow.version.desc())
    return [convert.release(row) for row in session.scalars(query)]


def current_release(session: Session, app: AppRow) -> Release:
    if app.release_id is None:
        raise NotFound(f'app "{app.name}" has no release yet')
    return convert.release(release_row(session, app.release_id))
