"""The controller's tables (SQLAlchemy 2 typed declarative models). The schema itself is owned by the
Alembic migrations in `migrations/versions`; keep both in step."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from encom.api.types import utcnow


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone; we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONDict = dict[str, Any]
# SQLite only makes INTEGER PRIMARY KEY an auto-incrementing rowid; PostgreSQL gets a bigint identity.
EventId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, JSONDict: JSON}


class AppRow(Base):
    __tablename__ = "apps"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    # No FK: apps and releases would reference each other; the code keeps it consistent.
    release_id: Mapped[str | None] = mapped_column(String(36))
    meta: Mapped[JSONDict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class KeyRow(Base):
    __tablename__ = "keys"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_type: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(Text)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ArtifactRow(Base):
    __tablename__ = "artifacts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    meta: Mapped[JSONDict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReleaseRow(Base):
    __tablename__ = "releases"
    __table_args__ = (UniqueConstraint("app_id", "version", name="uq_releases_app_version"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    artifact_id: Mapped[str | None] = mapped_column(ForeignKey("artifacts.id"))
    version: Mapped[int]
    env: Mapped[JSONDict] = mapped_column(default=dict)
    processes: Mapped[JSONDict] = mapped_column(default=dict)
    meta: Mapped[JSONDict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FormationRow(Base):
    __tablename__ = "formations"

    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    release_id: Mapped[str] = mapped_column(ForeignKey("releases.id", ondelete="CASCADE"), primary_key=True)
    processes: Mapped[JSONDict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeploymentRow(Base):
    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    old_release_id: Mapped[str | None] = mapped_column(String(36))
    new_release_id: Mapped[str] = mapped_column(String(36))
    strategy: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    processes: Mapped[JSONDict] = mapped_column(default=dict)
    old_processes: Mapped[JSONDict] = mapped_column(default=dict)
    release_job_id: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class JobRow(Base):
    """Jobs as the scheduler reports them. No FK to apps: a deleted app's jobs are still being stopped."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    app_id: Mapped[str] = mapped_column(String(36), index=True)
    release_id: Mapped[str] = mapped_column(String(36))
    type: Mapped[str] = mapped_column(String(64))
    host_id: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    port: Mapped[int | None]
    exit_status: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    restarts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RouteRow(Base):
    __tablename__ = "routes"
    __table_args__ = (
        UniqueConstraint("domain", "path", name="uq_routes_domain_path"),
        UniqueConstraint("port", name="uq_routes_port"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(8))
    domain: Mapped[str | None] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text, default="/")
    port: Mapped[int | None]
    service: Mapped[str] = mapped_column(String(128))
    sticky: Mapped[bool] = mapped_column(default=False)
    certificate: Mapped[str | None] = mapped_column(Text)  # the route's own PEM chain (http only)
    key: Mapped[str | None] = mapped_column(Text)  # its private key (PEM)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class EventRow(Base):
    """The event log. No FK to apps: events outlive the app they describe (app_deletion)."""

    __tablename__ = "events"
    __table_args__ = {"sqlite_autoincrement": True}  # never reuse ids: they are SSE resume points

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    app_id: Mapped[str | None] = mapped_column(String(36), index=True)
    object_type: Mapped[str] = mapped_column(String(32), index=True)
    object_id: Mapped[str] = mapped_column(String(128))
    data: Mapped[JSONDict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DrainRow(Base):
    """A log drain of an app. `cursor` is the time of the last line delivered (the drainer resumes after it)."""

    __tablename__ = "drains"
    __table_args__ = (UniqueConstraint("app_id", "url", name="uq_drains_app_url"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    token: Mapped[str] = mapped_column(String(64))
    cursor: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
