"""The queries of cache garbage collection (``db/gc.py``) on SQLite and PostgreSQL; the
algorithm that uses them is tested in ``tests/cache/test_gc.py``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from nixfarm.db import gc, paths
from nixfarm.db.engine import Database
from nixfarm.db.models import Nar
from tests.db.helpers import file_hash, new_cache, new_nar, store_hash, store_path

pytestmark = pytest.mark.anyio


def _later() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=5)


async def test_delete_paths_takes_the_path_but_not_its_nar(db: Database) -> None:
    cache = await new_cache(db)
    nar = await new_nar(db, "a", cache=cache)
    async with db.session() as session:
        path = await paths.put_path(session, cache.id, store_path=store_path("a"), nar=nar)
    async with db.session() as session:
        # Uploaded again since it was chosen: not old enough any more, so it stays.
        assert await gc.delete_paths(session, cache.id, [store_hash("a")], path.created_at) == []
        assert await gc.delete_paths(session, cache.id, [store_hash("a")], _later()) \
            == [store_hash("a")]
        assert await gc.delete_paths(session, cache.id, [store_hash("a")], _later()) == []
        assert await paths.get_path(session, cache.id, store_hash("a")) is None
        assert await paths.cache_nar(session, cache.id, file_hash("a")) is not None


async def test_orphan_nars_are_collectable(db: Database) -> None:
    cache = await new_cache(db)
    used = await new_nar(db, "used", cache=cache)
    orphan = await new_nar(db, "orphan", cache=cache)
    async with db.session() as session:
        await paths.put_path(session, cache.id, store_path=store_path("a"), nar=used)
    async with db.session() as session:
        # Freshly uploaded NARs are spared: their narinfo may be on its way.
        assert await gc.orphan_nars(session, cache.id, orphan.created_at) == []
        found = await gc.orphan_nars(session, cache.id, _later())
        assert found == [orphan.id]
        assert [n.id for n in await gc.delete_unused_nars(session, found)] == [orphan.id]
    async with db.session() as session:
        assert await paths.get_nar_by_file_hash(session, orphan.file_hash) is None
        assert await paths.cache_nar(session, cache.id, orphan.file_hash) is None
        assert await paths.cache_nar(session, cache.id, used.file_hash) is not None


async def test_a_nar_in_use_cannot_be_deleted(db: Database) -> None:
    cache = await new_cache(db)
    nar = await new_nar(db, "a", cache=cache)
    async with db.session() as session:
        await paths.put_path(session, cache.id, store_path=store_path("a"), nar=nar)
    async with db.session() as session:
        assert await gc.delete_unused_nars(session, [nar.id]) == []
    # Nor can anything else delete it: the schema refuses.
    with pytest.raises(sa.exc.IntegrityError):
        async with db.session() as session:
            await session.execute(sa.delete(Nar).where(Nar.id == nar.id))
