"""Engine, sessions and the two kinds of transaction the coordinator uses.

Read transactions (``Database.read``) only look. Write transactions (``Database.write``)
may read state and then change it based on what they read (count a round's updates, then
close it), which is only correct if no other writer can slip in between:

- **SQLite**: the write transaction starts with ``BEGIN IMMEDIATE``, taking the database's
  single write lock up front. A deferred ``BEGIN`` would read a snapshot and then fail to
  upgrade to a writer (``SQLITE_BUSY_SNAPSHOT``, which no busy timeout can wait out) if
  another connection committed meanwhile. WAL mode lets readers run during a write, and
  ``busy_timeout`` makes writers queue instead of failing. ``synchronous=FULL`` fsyncs the
  WAL at every commit, so a committed transaction survives power loss, not just a crash.
- **PostgreSQL**: row locks, ``SELECT ... FOR NO KEY UPDATE`` (:meth:`Database.lock`), on
  the row that guards the state: the round for uploads, task assignment and closing. Writers
  of different rounds never wait for each other. Lock order everywhere: round, then job,
  then device, so two transactions never wait on each other in a cycle.

On SQLite ``lock`` compiles to a plain ``SELECT`` (the immediate transaction already holds
the only write lock), so the same service code is correct on both.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

#: How long a SQLite writer waits for the write lock before giving up (seconds).
SQLITE_BUSY_TIMEOUT_S = 60.0
_WRITE_OPTION = "pockettune_write"
#: Arbitrary constant: the PostgreSQL advisory lock that serializes schema migrations
#: when several coordinator processes start on one database at once.
_MIGRATION_LOCK_ID = 0x706F636B  # "pock"


class Database:
    """One engine and its session factories; one per app (never global)."""

    def __init__(self, url: str, *, pool_size: int = 10):
        self.url = make_url(url)
        self.backend = self.url.get_backend_name()
        if self.backend == "sqlite":
            database = self.url.database or ""
            if database in ("", ":memory:") or database.startswith("file::memory:"):
                raise ValueError("an in-memory SQLite database cannot be shared by the coordinator's "
                                 "threads or survive a restart; give a file, e.g. sqlite:///coordinator.sqlite3")
            Path(database).expanduser().absolute().parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(
                self.url, pool_size=pool_size, max_overflow=pool_size,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})
            _install_sqlite_transaction_control(self.engine)
        else:
            self.engine = create_engine(self.url, pool_size=pool_size, max_overflow=pool_size,
                                        pool_pre_ping=True)
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(**{_WRITE_OPTION: True}),
                                   expire_on_commit=False)

    @property
    def display_url(self) -> str:
        """The URL with any password hidden, for logs and the health endpoint."""
        return self.url.render_as_string(hide_password=True)

    @contextlib.contextmanager
    def read(self):
        """A session for reads only; whatever it did is rolled back at the end."""
        with self._read() as session:
            yield session

    @contextlib.contextmanager
    def write(self):
        """A read-then-write transaction: committed when the block exits normally.

        Commit happens before the ``with`` returns, so a caller that answers a client
        after the block answers only about committed (durable) state.
        """
        session = self._write()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @staticmethod
    def lock(session: Session, model, row_id: int):
        """Load ``model`` row ``row_id`` holding its row lock until the transaction ends (or None)."""
        statement = (select(model).where(model.id == row_id).with_for_update(key_share=True)
                     .execution_options(populate_existing=True))
        return session.execute(statement).scalar_one_or_none()

    def upgrade_schema(self) -> str:
        """Bring the schema to the newest Alembic revision; returns that revision."""
        from coordinator.migrations import upgrade_to_head

        with self.engine.execution_options(**{_WRITE_OPTION: True}).begin() as connection:
            if self.backend == "postgresql":
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})")
            return upgrade_to_head(connection)

    def dispose(self) -> None:
        self.engine.dispose()


def _install_sqlite_transaction_control(engine: Engine) -> None:
    """Let SQLAlchemy (not the sqlite3 module) emit BEGIN, so writes can say IMMEDIATE."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, connection_record):
        # sqlite3's legacy mode would BEGIN only before DML; take that job over (see module doc).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        immediate = connection.get_execution_options().get(_WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
