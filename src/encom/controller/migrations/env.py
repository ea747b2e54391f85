"""Alembic environment: run programmatically by `encom.controller.db.migrate` with a connection in
`config.attributes["connection"]`, or from the command line with `sqlalchemy.url` set."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from encom.controller.models import Base

config = context.config
target_metadata = Base.metadata


def run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    with create_engine(config.get_main_option("sqlalchemy.url") or "").connect() as conn:
        run(conn)
