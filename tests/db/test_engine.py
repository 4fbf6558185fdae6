"""Connecting, transactions, and the SQLite settings the embedded farm relies on."""

from __future__ import annotations

from pathlib import Path

import anyio.lowlevel
import pytest
import sqlalchemy as sa

from nixfarm.db.engine import Database, async_url, migrate, sync_url
from nixfarm.db.models import Cache
from nixfarm.errors import ConfigError

pytestmark = pytest.mark.anyio


def test_urls_get_drivers() -> None:
    assert async_url("sqlite:////data/x.db").render_as_string() == "sqlite+aiosqlite:////data/x.db"
    assert sync_url("sqlite:///x.db").drivername == "sqlite+pysqlite"
    pg = async_url("postgresql://u:p%40ss@db.example:5433/farm")
    assert pg.drivername == "postgresql+psycopg"
    assert (pg.password, pg.host, pg.port, pg.database) == ("p@ss", "db.example", 5433, "farm")
    assert async_url("postgres://h/farm").drivername == "postgresql+psycopg"
    assert sync_url("postgresql+psycopg2://h/farm").drivername == "postgresql+psycopg"


@pytest.mark.parametrize("url", ["mysql://h/db", "not a url", "sqlite://", "sqlite:///:memory:"])
def test_other_databases_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        async_url(url)
    assert info.value.key == "database_url"


async def test_connect_fails_for_unreachable_database() -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    with pytest.raises(sa.exc.OperationalError):
        await Database.connect("postgresql://postgres@127.0.0.1:1/nixfarm")


def _cache(name: str) -> Cache:
    return Cache(name=name, secret_key="k:s", public_key="k:p")


async def test_session_commits_on_success(db: Database) -> None:
    async with db.session() as session:
        session.add(_cache("kept"))
    async with db.session() as session:
        assert await session.scalar(sa.select(Cache.name)) == "kept"


async def test_session_rolls_back_on_error(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.session() as session:
            session.add(_cache("lost"))
            await session.flush()
            raise RuntimeError("boom")
    async with db.session() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(Cache)) == 0


async def test_savepoints_roll_back_only_their_part(db: Database) -> None:
    # With Python's default sqlite3 transaction handling, a SAVEPOINT before the first
    # write escapes the transaction; this checks that it does not.
    with pytest.raises(RuntimeError):
        async with db.session() as session:
            await session.execute(sa.select(Cache.id))
            async with session.begin_nested():
                session.add(_cache("inner"))
            session.add(_cache("outer"))
            await session.flush()
            raise RuntimeError("abort all")
    async with db.session() as session:
        assert list(await session.scalars(sa.select(Cache.name))) == []


async def test_sqlite_settings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/farm.db"
    migrate(url)
    db = await Database.connect(url)
    try:
        async with db.session() as session:
            conn = await session.connection()
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 10_000
    finally:
        await db.close()


async def test_concurrent_sessions_all_commit(db: Database) -> None:
    # Many writers at once: on SQLite they queue for the one connection instead of
    # failing with "database is locked".
    async def create(i: int) -> None:
        async with db.session() as session:
            await session.execute(sa.select(Cache.id))  # read, then write
            await anyio.lowlevel.checkpoint()
            session.add(_cache(f"c{i}"))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(create, i)
    async with db.session() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(Cache)) == 20


async def test_foreign_keys_are_enforced(db: Database) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        async with db.session() as session:
            await session.execute(
                sa.text("INSERT INTO cache_nars (cache_id, nar_id) VALUES (41, 42)")
            )


async def test_sessions_see_each_others_commits(db: Database) -> None:
    async with db.session() as first:
        first.add(_cache("a"))
    async with db.session() as second:
        cache = await second.scalar(sa.select(Cache).where(Cache.name == "a"))
        assert cache is not None
        cache.priority = 10
    async with db.session() as third:
        assert await third.scalar(sa.select(Cache.priority)) == 10
