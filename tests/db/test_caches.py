from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from nixfarm import naming
from nixfarm.db import caches, paths
from nixfarm.db.engine import Database
from nixfarm.db.models import Cache
from nixfarm.errors import Conflict, InvalidInput, NotFound
from tests.db.helpers import file_hash, nar_hash, store_path

pytestmark = pytest.mark.anyio


async def test_create_and_get(db: Database) -> None:
    before = datetime.now(UTC)
    async with db.session() as session:
        created = await caches.create_cache(
            session, "main", private=True, secret_key="main-1:c2Vj", public_key="main-1:cHVi"
        )
    async with db.session() as session:
        cache = await caches.get_cache(session, "main")
    assert cache.id == created.id
    assert (cache.name, cache.private, cache.priority) == ("main", True, 40)
    assert (cache.secret_key, cache.public_key) == ("main-1:c2Vj", "main-1:cHVi")
    assert cache.created_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= cache.created_at <= datetime.now(UTC)


async def test_priority_is_kept(db: Database) -> None:
    async with db.session() as session:
        await caches.create_cache(session, "low", False, "k:s", "k:p", priority=10)
    async with db.session() as session:
        assert (await caches.get_cache(session, "low")).priority == 10


async def test_duplicate_name_conflicts(db: Database) -> None:
    async with db.session() as session:
        await caches.create_cache(session, "main", False, "k:s", "k:p")
    with pytest.raises(Conflict):
        async with db.session() as session:
            await caches.create_cache(session, "main", True, "k2:s", "k2:p")
    async with db.session() as session:
        assert not (await caches.get_cache(session, "main")).private


async def test_conflict_leaves_the_session_usable(db: Database) -> None:
    async with db.session() as session:
        await caches.create_cache(session, "main", False, "k:s", "k:p")
        with pytest.raises(Conflict):
            await caches.create_cache(session, "main", False, "k:s", "k:p")
        await caches.create_cache(session, "other", False, "k:s", "k:p")
    async with db.session() as session:
        assert [c.name for c in await caches.list_caches(session)] == ["main", "other"]


@pytest.mark.parametrize(
    "name", ["", "Main", "-lead", ".hidden", "a/b", "a b", "x" * 64, "caf\u00e9", "main\n"]
)
async def test_bad_names_are_invalid(db: Database, name: str) -> None:
    async with db.session() as session:
        with pytest.raises(InvalidInput) as info:
            await caches.create_cache(session, name, False, "k:s", "k:p")
    assert info.value.field == "name"


@pytest.mark.parametrize("name", ["a", "0", "my-cache.v2_x", "x" * 63])
def test_good_names(name: str) -> None:
    assert naming.check_cache_name(name) == name


async def test_get_missing_is_not_found(db: Database) -> None:
    async with db.session() as session:
        with pytest.raises(NotFound) as info:
            await caches.get_cache(session, "nope")
    assert (info.value.kind, info.value.name) == ("cache", "nope")


async def test_list_is_by_name(db: Database) -> None:
    async with db.session() as session:
        for name in ["zeta", "alpha", "mid"]:
            await caches.create_cache(session, name, False, "k:s", "k:p")
    async with db.session() as session:
        assert [c.name for c in await caches.list_caches(session)] == ["alpha", "mid", "zeta"]


async def test_deleting_a_cache_takes_paths_logs_and_memberships_but_not_nars(
        db: Database) -> None:
    async with db.session() as session:
        doomed = await caches.create_cache(session, "doomed", False, "k:s", "k:p")
        kept = await caches.create_cache(session, "kept", False, "k:s", "k:p")
        nar = await paths.add_nar(
            session,
            file_hash=file_hash("1"),
            file_size=10,
            compression="zstd",
            nar_hash=nar_hash("1"),
            nar_size=20,
            storage_key="nar/1",
        )
        for cache in (doomed, kept):
            await paths.link_nar_to_cache(session, cache.id, nar.id)
            await paths.put_path(session, cache.id, store_path=store_path("1"), nar=nar)
        await paths.put_log(session, doomed.id, "a" * 32 + "-x.drv", "log/x", 5)
    async with db.session() as session:  # what the schema's cascades do
        await session.execute(sa.delete(Cache).where(Cache.name == "doomed"))
    async with db.session() as session:
        with pytest.raises(NotFound):
            await caches.get_cache(session, "doomed")
        assert await paths.cache_nar(session, doomed.id, file_hash("1")) is None
        assert await paths.count_paths(session, doomed.id) == 0
        assert await paths.get_log(session, doomed.id, "a" * 32 + "-x.drv") is None
        assert await paths.get_nar_by_file_hash(session, file_hash("1")) is not None
        assert await paths.cache_nar(session, kept.id, file_hash("1")) is not None
        assert await paths.count_paths(session, kept.id) == 1
