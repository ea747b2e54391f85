"""The controller's SQLite database: private from creation (-wal and -shm too), and what is deleted is gone from
its bytes (secure_delete, WAL truncated)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlalchemy import text

from encom.controller.db import Database


def _files(db_path: Path) -> list[Path]:
    return sorted(db_path.parent.glob(db_path.name + "*"))


def test_the_database_and_its_wal_are_private_and_forget_deleted_rows(tmp_path: Path) -> None:
    db_path = tmp_path / "controller.db"
    secret = b"env-secret-7c1f0e9d"
    previous = os.umask(0o022)
    try:
        db = Database(f"sqlite:///{db_path}")
        with db.write() as session:
            session.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
            session.execute(text("INSERT INTO t (v) VALUES (:v), ('kept')"), {"v": secret.decode()})
        reader = db.engine.connect()  # an open connection keeps the -wal and -shm files in place
        reader.exec_driver_sql("SELECT 1").all()
        assert [p.name[len("controller.db") :] for p in _files(db_path)] == ["", "-shm", "-wal"]
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in _files(db_path))
        assert any(secret in p.read_bytes() for p in _files(db_path))

        with db.write() as session:
            session.execute(text("DELETE FROM t WHERE v = :v"), {"v": secret.decode()})
        reader.rollback()
        assert db.truncate_wal()
        assert not any(secret in p.read_bytes() for p in _files(db_path))
        assert (db_path.parent / "controller.db-wal").stat().st_size == 0
        reader.close()
        db.close()
    finally:
        os.umask(previous)


def test_an_older_database_loses_group_and_other_permissions(tmp_path: Path) -> None:
    db_path = tmp_path / "controller.db"
    db_path.touch()
    db_path.chmod(0o644)
    Database(f"sqlite:///{db_path}").close()
    assert stat.S_IMODE(db_path.stat().st_mode) == 0o600
