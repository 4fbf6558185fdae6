"""Connecting to the database, and migrating it.

Users write plain URLs (``sqlite:///data/nixfarm.db``, ``postgresql://host/db``); the
server runs on asyncio, so ``Database.connect`` swaps in the async driver (aiosqlite,
psycopg's async mode), while ``migrate`` runs Alembic on a synchronous driver once at
start-up, before anything else touches the schema.

SQLite, for the embedded farm (one process), is set up as follows:

- Real transactions. Python's sqlite3 by default begins a transaction only before
  INSERT/UPDATE/DELETE, so a SELECT then UPDATE is not atomic and SAVEPOINTs escape
  the enclosing transaction. We turn that off and emit BEGIN ourselves.
- One connection. SQLite has one writer at a time; with several connections a
  transaction that read and then wants to write fails at once with "database is
  locked" when another committed in between. With one connection, sessions queue in
  the pool (first come, first served, no sleeping in SQLite's busy handler) and each
  sees a consistent database. Keep sessions short: do not await network I/O inside
  one, and never open a session while holding another (it would wait for itself).
- WAL, so that other processes (a backup, ``sqlite3`` in a shell) can read while
  the farm writes and the farm can write while they read; ``busy_timeout`` makes
  our connection wait for such outsiders rather than fail.
- Foreign keys, which SQLite ignores unless asked on every connection (``migrate``
  leaves them off: Alembic's batch mode recreates tables, and dropping a parent
  table with them on would cascade-delete its children).

PostgreSQL gets an ordinary pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from nixfarm.errors import ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}
_SYNC_DRIVERS = {"sqlite": "sqlite+pysqlite", "postgresql": "postgresql+psycopg"}
_BUSY_TIMEOUT_MS = 10_000
# PostgreSQL advisory lock held while migrating (any constant, ours alone).
_LOCK = 0x6E6978666172  # "nixfar"


def _url(url: str, drivers: dict[str, str]) -> URL:
    """Parse ``url`` and give it the driver chosen for its backend."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as e:
        raise ConfigError(f"The database URL {url!r} cannot be parsed.", key="database_url") from e
    backend = parsed.get_backend_name()
    if backend == "postgres":  # Heroku-style spelling
        backend = "postgresql"
    if backend not in drivers:
        raise ConfigError(
            f"The database URL must be sqlite:// or postgresql://, not {backend}://.",
            key="database_url",
        )
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        # Each connection would get its own empty database, and migrate another one.
        raise ConfigError("An SQLite database must be a file, not in memory.", key="database_url")
    return parsed.set(drivername=drivers[backend])


def async_url(url: str) -> URL:
    return _url(url, _ASYNC_DRIVERS)


def sync_url(url: str) -> URL:
    return _url(url, _SYNC_DRIVERS)


def _tune_sqlite(engine: sa.Engine, *, foreign_keys: bool, begin: str = "BEGIN") -> None:
    if engine.dialect.name != "sqlite":
        return

    def on_connect(dbapi_connection: Any, connection_record: Any) -> None:
        # Stop the driver from beginning (and not beginning) transactions itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            # Safe with WAL: a power loss may lose the last commits, never the file.
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    def on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql(begin)

    sa.event.listen(engine, "connect", on_connect)
    sa.event.listen(engine, "begin", on_begin)


class Database:
    """An async engine and the sessions made from it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # Objects stay readable after commit: callers render them after the session ends.
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)

    @classmethod
    async def connect(cls, url: str) -> Database:
        """Open a pool to ``url`` and check that the database answers."""
        parsed = async_url(url)
        if parsed.get_backend_name() == "sqlite":
            engine = create_async_engine(parsed, pool_size=1, max_overflow=0)
            _tune_sqlite(engine.sync_engine, foreign_keys=True)
        else:
            engine = create_async_engine(parsed, pool_pre_ping=True)
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """One transaction: committed when the block ends, rolled back if it raises.

        Keep it short (see the module's notes on SQLite).
        """
        async with self._sessions.begin() as session:
            yield session

    async def close(self) -> None:
        await self.engine.dispose()


async def connect(url: str) -> Database:
    return await Database.connect(url)


def alembic_config() -> Config:
    """Alembic's configuration, built in code so it works from an installed package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the schema at ``url`` to ``revision`` (synchronously; run at start-up)."""
    engine = sa.create_engine(sync_url(url))
    # IMMEDIATE: take the write lock before reading the schema, so that processes
    # migrating at once wait for each other instead of failing on a stale read.
    _tune_sqlite(engine, foreign_keys=False, begin="BEGIN IMMEDIATE")
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Servers starting together take turns; the later ones find nothing to do.
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
            config = alembic_config()
            # env.py uses this connection rather than a URL in an ini file.
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()
