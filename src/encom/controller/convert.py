"""Rows to wire types: each wire model reads the row attributes it names (and nothing else)."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

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

M = TypeVar("M", bound=BaseModel)


def _wire(model: type[M], row: object) -> M:
    return model.model_validate(row, from_attributes=True)


def app(row: AppRow) -> App:
    return _wire(App, row)


def key(row: KeyRow) -> Key:
    return _wire(Key, row)


def artifact(row: ArtifactRow) -> Artifact:
    return _wire(Artifact, row)


def release(row: ReleaseRow) -> Release:
    return _wire(Release, row)


def formation(row: FormationRow) -> Formation:
    return _wire(Formation, row)


def deployment(row: DeploymentRow) -> Deployment:
    return _wire(Deployment, row)


def job(row: JobRow) -> Job:
    return _wire(Job, row)


def route(row: RouteRow) -> Route:
    return _wire(Route, row)


def event(row: EventRow) -> Event:
    return _wire(Event, row)
