"""Formations: how many processes of each type run for an (app, release)."""

from __future__ import annotations

import sys

from sqlalchemy import select
from sqlalchemy.orm import Session

from encom.api.errors import NotFound, ValidationError
from encom.api.types import RELEASE_TYPE, ExpandedFormation, Formation, check_process_counts, shown, utcnow
from encom.controller import convert, events
from encom.controller.models import AppRow, ArtifactRow, FormationRow, ReleaseRow


def check_counts(release: ReleaseRow, processes: dict[str, int], limit: int | None = None) -> None:
    """Known types, counts from 0 to `limit` (the cluster's max_processes_per_type; None: internal moves of
    counts already checked)."""
    unknown = [name for name in processes if name not in release.processes]
    if unknown:
        listed = ", ".join(shown(name) for name in sorted(unknown)[:5])
        raise ValidationError(f"unknown process types: {listed}" + (" ..." if len(unknown) > 5 else ""))
    check_process_counts(processes, limit if limit is not None else sys.maxsize)
    if processes.get(RELEASE_TYPE, 0) > 0:
        raise ValidationError(f'"{RELEASE_TYPE}" runs once per deploy (the release phase); it cannot be scaled')


def object_id(app_id: str, release_id: str) -> str:
    return f"{app_id}:{release_id}"


def put(session: Session, app: AppRow, release: ReleaseRow, processes: dict[str, int]) -> Formation:
    """Replace the formation's counts (creating it if needed) and record a `formation` event."""
    check_counts(release, processes)
    row = session.get(FormationRow, (app.id, release.id))
    now = utcnow()
    if row is None:
        row = FormationRow(app_id=app.id, release_id=release.id, created_at=now)
        session.add(row)
    row.processes = dict(processes)
    row.updated_at = now
    session.flush()
    formation = convert.formation(row)
    events.record(session, "formation", object_id(app.id, release.id), formation, app.id)
    return formation


def get(session: Session, app: AppRow, release_id: str) -> Formation:
    row = session.get(FormationRow, (app.id, release_id))
    if row is None:
        raise NotFound(f'no formation for app "{app.name}" and release "{release_id}"')
    return convert.formation(row)


def list_for_app(session: Session, app: AppRow) -> list[Formation]:
    query = select(FormationRow).where(FormationRow.app_id == app.id).order_by(FormationRow.created_at)
    return [convert.formation(row) for row in session.scalars(query)]


def scale_app_to_zero(session: Session, app: AppRow) -> None:
    """Zero every formation of the app, with events, so the scheduler stops its jobs."""
    for row in session.scalars(select(FormationRow).where(FormationRow.app_id == app.id)):
        release = session.get(ReleaseRow, row.release_id)
        if release is not None:
            put(session, app, release, {name: 0 for name in row.processes})


def _expand(session: Session, row: FormationRow) -> ExpandedFormation:
    app = session.get(AppRow, row.app_id)
    release = session.get(ReleaseRow, row.release_id)
    assert app is not None and release is not None  # foreign keys
    artifact = session.get(ArtifactRow, release.artifact_id) if release.artifact_id else None
    return ExpandedFormation(
        app=convert.app(app),
        release=convert.release(release),
        artifact=convert.artifact(artifact) if artifact else None,
        processes=row.processes,
        updated_at=row.updated_at,
    )


def active(session: Session) -> list[ExpandedFormation]:
    rows = session.scalars(select(FormationRow).order_by(FormationRow.created_at))
    return [_expand(session, row) for row in rows if any(count > 0 for count in row.processes.values())]


def expanded(session: Session, app_id: str, release_id: str) -> ExpandedFormation:
    row = session.get(FormationRow, (app_id, release_id))
    if row is None:
        raise NotFound(f'no formation for app "{app_id}" and release "{release_id}"')
    return _expand(session, row)
