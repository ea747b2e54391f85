"""Rows to wire types."""

from __future__ import annotations

from encom.api.types import App, Artifact, Deployment, Event, Formation, Job, Key, Release, Route
from encom.controller.models import (
    AppRow,
    ArtifactRow,
    DeploymentRow,
    EventRow,
    FormationRow,
    JobRow,
    KeyRow,
    ReleaseRow,
    RouteRow,
)


def app(row: AppRow) -> App:
    return App(
        id=row.id,
        name=row.name,
        release_id=row.release_id,
        strategy=row.strategy,
        meta=row.meta,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def key(row: KeyRow) -> Key:
    return Key(fingerprint=row.fingerprint, key=row.key, comment=row.comment, created_at=row.created_at)


def artifact(row: ArtifactRow) -> Artifact:
    return Artifact.model_validate(
        {"id": row.id, "type": row.type, "url": row.url, "meta": row.meta, "created_at": row.created_at}
    )


def release(row: ReleaseRow) -> Release:
    return Release.model_validate(
        {
            "id": row.id,
            "app_id": row.app_id,
            "artifact_id": row.artifact_id,
            "version": row.version,
            "env": row.env,
            "processes": row.processes,
            "meta": row.meta,
            "created_at": row.created_at,
        }
    )


def formation(row: FormationRow) -> Formation:
    return Formation(app_id=row.app_id, release_id=row.release_id, processes=row.processes, updated_at=row.updated_at)


def deployment(row: DeploymentRow) -> Deployment:
    return Deployment.model_validate(
        {
            "id": row.id,
            "app_id": row.app_id,
            "old_release_id": row.old_release_id,
            "new_release_id": row.new_release_id,
            "strategy": row.strategy,
            "status": row.status,
            "processes": row.processes,
            "error": row.error,
            "created_at": row.created_at,
            "finished_at": row.finished_at,
        }
    )


def job(row: JobRow) -> Job:
    return Job.model_validate(
        {
            "id": row.id,
            "app_id": row.app_id,
            "release_id": row.release_id,
            "type": row.type,
            "host_id": row.host_id,
            "state": row.state,
            "port": row.port,
            "exit_status": row.exit_status,
            "error": row.error,
            "restarts": row.restarts,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }
    )


def route(row: RouteRow) -> Route:
    return Route.model_validate(
        {
            "id": row.id,
            "app_id": row.app_id,
            "type": row.type,
            "domain": row.domain,
            "path": row.path,
            "port": row.port,
            "service": row.service,
            "sticky": row.sticky,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
        }
    )


def event(row: EventRow) -> Event:
    return Event.model_validate(
        {
            "id": row.id,
            "app_id": row.app_id,
            "object_type": row.object_type,
            "object_id": row.object_id,
            "data": row.data,
            "created_at": row.created_at,
        }
    )
