"""Alembic environment: runs on the connection the coordinator hands over, or on POCKETTUNE_DB."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from coordinator.models import Base

target_metadata = Base.metadata


def _run(connection) -> None:
    # render_as_batch: SQLite cannot ALTER most things in place; batch mode copies the table.
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = os.environ.get("POCKETTUNE_DB")
    if not url:
        raise SystemExit("set POCKETTUNE_DB to the database URL to run Alembic from the command line")
    engine = create_engine(url)
    with engine.begin() as connection:
        _run(connection)


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run against a database")
run_migrations_online()
