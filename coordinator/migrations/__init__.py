"""Alembic migrations of the coordinator's schema; the app upgrades to head when it starts.

New migration (after changing :mod:`coordinator.models`)::

    POCKETTUNE_DB=sqlite:///instance/coordinator.sqlite3 \\
        .venv/bin/alembic -c coordinator/migrations/alembic.ini revision --autogenerate -m "what changed"

``tests/coordinator/test_coordinator_units.py::test_migrations_create_exactly_the_models_schema`` fails
when the models and the migrations disagree.
"""

from __future__ import annotations

from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config(connection=None):
    """An Alembic ``Config`` for these migrations (no ini file needed), optionally bound to ``connection``."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest revision these migrations define."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection) -> str | None:
    """The revision the database on ``connection`` is at (None before the first upgrade)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def upgrade_to_head(connection) -> str:
    """Upgrade the database on ``connection`` (inside the caller's transaction) to head."""
    from alembic import command

    command.upgrade(alembic_config(connection), "head")
    return current_revision(connection)
