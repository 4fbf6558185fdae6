"""The web's cache queries: size, search by hash or name (paged), referrers, retention."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from nixfarm.db import browsing, paths
from nixfarm.db.engine import Database
from nixfarm.db.models import Cache
from tests.db.helpers import new_cache, new_nar, store_hash, store_path

pytestmark = pytest.mark.anyio


async def _fill(db: Database) -> int:
    cache = await new_cache(db)
    other = await new_cache(db, "other")
    dep = store_path("dep", "libdep-1.0")
    rows = [("dep", "libdep-1.0", []), ("top", "hello_world-2.1", [dep]),
            ("pct", "goxwing-1", [dep])]
    nars = [await new_nar(db, seed, cache) for seed, _, _ in rows]
    elsewhere = await new_nar(db, "elsewhere", other)
    async with db.session() as s:
        for (seed, name, refs), nar in zip(rows, nars, strict=True):
            await paths.put_path(s, cache.id, store_path=store_path(seed, name), nar=nar,
                                 references=[r.rsplit("/", 1)[-1] for r in refs])
        # A path of another cache that refers to the same dependency: never a referrer.
        await paths.put_path(s, other.id, store_path=store_path("elsewhere", "x-1"),
                             nar=elsewhere, references=[dep.rsplit("/", 1)[-1]])
    return cache.id


async def test_size_counts_paths_and_bytes(db: Database) -> None:
    cache_id = await _fill(db)
    async with db.session() as s:
        size = await browsing.cache_size(s, cache_id)
    # new_nar: file size 100 + len(seed), NAR size 1000 + len(seed).
    assert size == browsing.CacheSize(paths=3, file_bytes=309, nar_bytes=3009)


async def test_search_by_hash_prefix_name_and_paged(db: Database) -> None:
    cache_id = await _fill(db)
    async with db.session() as s:
        by_hash = await browsing.search_paths(s, cache_id, store_hash("top")[:6], offset=0,
                                              limit=10)
        by_name = await browsing.search_paths(s, cache_id, "hello_w", offset=0, limit=10)
        # LIKE's wildcard "_" is a literal character in a query ("oxw" does not match).
        underscore = await browsing.search_paths(s, cache_id, "o_w", offset=0, limit=10)
        everything = await browsing.search_paths(s, cache_id, "", offset=0, limit=10)
        second = await browsing.search_paths(s, cache_id, "", offset=2, limit=2)
        full = await browsing.search_paths(s, cache_id, store_path("dep", "libdep-1.0"),
                                           offset=0, limit=10)
    assert [p.store_hash for p in by_hash] == [store_hash("top")]
    assert [p.store_path for p in by_name] == [store_path("top", "hello_world-2.1")]
    assert [p.store_path for p in underscore] == [store_path("top", "hello_world-2.1")]
    assert len(everything) == 3
    assert [p.store_path for p in everything] == sorted(p.store_path for p in everything)
    assert [p.store_path for p in second] == [everything[2].store_path]
    assert [p.store_hash for p in full] == [store_hash("dep")]


async def test_referrers_stay_in_the_cache(db: Database) -> None:
    cache_id = await _fill(db)
    async with db.session() as s:
        found = await browsing.referrers(s, cache_id, store_path("dep", "libdep-1.0")
                                         .rsplit("/", 1)[-1], 10)
        none = await browsing.referrers(s, cache_id, store_path("top", "hello_world-2.1")
                                        .rsplit("/", 1)[-1], 10)
    assert sorted(p.store_hash for p in found) == sorted([store_hash("top"), store_hash("pct")])
    assert none == []


async def test_retention_is_set_and_listed(db: Database) -> None:
    cache_id = await _fill(db)
    async with db.session() as s:
        assert await browsing.retained(s) == []
        await browsing.set_retention(s, cache_id, 7.5)
    async with db.session() as s:
        assert await browsing.retained(s) == [("main", 7.5)]
        await browsing.set_retention(s, cache_id, None)
    async with db.session() as s:
        assert await browsing.retained(s) == []


async def test_sizes_of_many_caches_in_one_statement(db: Database) -> None:
    # The cache list asks for every cache's size at once: one statement, whatever the
    # number of caches, each size what the cache's own query says.
    cache_id = await _fill(db)
    empty = await new_cache(db, "empty")
    async with db.session() as s:
        other_id = await s.scalar(sa.select(Cache.id).where(Cache.name == "other"))
        assert other_id is not None
        ids = [cache_id, other_id, empty.id]
        each = {i: await browsing.cache_size(s, i) for i in ids}
    statements: list[str] = []

    def seen(*args: object) -> None:
        statements.append(str(args[2]))

    sa.event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        async with db.session() as s:
            sizes = await browsing.cache_sizes(s, [*ids, 10_000])
    finally:
        sa.event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    assert len([st for st in statements if st.lstrip().upper().startswith("SELECT")]) == 1
    assert sizes == each  # an unknown id is left out
    assert sizes[other_id] == browsing.CacheSize(paths=1, file_bytes=109, nar_bytes=1009)
    assert sizes[empty.id] == browsing.CacheSize(0, 0, 0)
