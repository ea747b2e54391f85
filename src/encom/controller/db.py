"""The controller's database: engine (SQLite by default, any SQLAlchemy URL such as
`postgresql+psycopg://...`), migrations, and transactions that wake event subscribers after commit."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from encom.api.files import restrict
from encom.api.settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT = 30.0
EVENTS_KEY = "encom_events"  # Session.info flag: this transaction recorded events


def default_url(settings: Settings) -> str:
    return f"sqlite:///{settings.dir('controller') / 'controller.db'}"


def _setup_sqlite(engine: Engine) -> None:
    """WAL and foreign keys on every connection; write transactions take the write lock at BEGIN
    (BEGIN IMMEDIATE), so read-then-write logic like "version = max + 1" cannot interleave."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let us emit BEGIN ourselves
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Deleted rows (a deleted app's env, a drain's password) are overwritten, not left in free pages.
        cursor.execute("PRAGMA secure_delete=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("encom_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def prepare_sqlite_file(url: str) -> None:
    """The database file exists with mode 0600 before SQLite opens it: SQLite gives its -wal and -shm files the
    database's mode, so they are private from creation too. Files of older versions lose group/other bits."""
    database = make_url(url).database
    if not database or database == ":memory:":
        return
    path = Path(database)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        restrict(path.with_name(path.name + suffix))


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        prepare_sqlite_file(url)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False})
        _setup_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._reads = sessionmaker(self.engine, expire_on_commit=False)
        self._writes = sessionmaker(self.engine.execution_options(encom_write=True), expire_on_commit=False)
        self.on_events: Callable[[], None] = lambda: None

    def migrate(self) -> None:
        migrate(self.engine)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._reads() as session, session.begin():
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction; subscribers are woken after it commits if it recorded events."""
        with self._writes() as session:
            with session.begin():
                yield session
            if session.info.get(EVENTS_KEY):
                self.on_events()

    def truncate_wal(self) -> bool:
        """Copy the WAL into the database and truncate it to zero bytes, so the old versions of pages (rows deleted
        since) are gone from it too. False when a reader kept it from completing (try again later)."""
        if self.engine.dialect.name != "sqlite":
            return True
        conn = self.engine.raw_connection()  # outside any transaction (the connection is in autocommit mode)
        try:
            cursor = conn.cursor()
            busy = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            cursor.close()
        finally:
            conn.close()
        return bool(busy == 0)

    def close(self) -> None:
        self.engine.dispose()
