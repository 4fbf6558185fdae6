"""Queries the web pages browse with: caches (sizes, search, referrers, build logs), and
the jobs runners are running.

Each is one query bounded by its page size, so a cache of a million paths browses as
fast as one of ten: search uses the ``(cache_id, store_hash)`` unique index for a hash
prefix, and a ``LIKE`` on the path's name otherwise (a scan of one cache's rows,
stopped at the page's end).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from nixfarm.db.models import BuildLog, Cache, CacheNar, CachePath, Job, Nar
from nixfarm.nix import nix32

_NIX32 = frozenset(nix32.ALPHABET)


@dataclass(frozen=True)
class CacheSize:
    paths: int
    #: Compressed bytes of the NAR files uploaded into the cache (what it stores).
    file_bytes: int
    #: Uncompressed NAR bytes of its paths (what substituting everything unpacks).
    nar_bytes: int


async def cache_size(session: AsyncSession, cache_id: int) -> CacheSize:
    return (await cache_sizes(session, [cache_id])).get(cache_id, CacheSize(0, 0, 0))


async def cache_sizes(session: AsyncSession, cache_ids: Collection[int]
                      ) -> dict[int, CacheSize]:
    """The sizes of several caches in one statement, whatever their number: each
    table's rows are grouped by cache once (a cache list must not query per cache)."""
    paths = (sa.select(CachePath.cache_id.label("cache_id"),
                       sa.func.count().label("paths"),
                       sa.func.sum(CachePath.nar_size).label("nar_bytes"))
             .where(CachePath.cache_id.in_(cache_ids))
             .group_by(CachePath.cache_id).subquery())
    files = (sa.select(CacheNar.cache_id.label("cache_id"),
                       sa.func.sum(Nar.file_size).label("file_bytes"))
             .join(Nar, CacheNar.nar_id == Nar.id)
             .where(CacheNar.cache_id.in_(cache_ids))
             .group_by(CacheNar.cache_id).subquery())
    rows = await session.execute(
        sa.select(Cache.id, paths.c.paths, files.c.file_bytes, paths.c.nar_bytes)
        .outerjoin(paths, paths.c.cache_id == Cache.id)
        .outerjoin(files, files.c.cache_id == Cache.id)
        .where(Cache.id.in_(cache_ids)))
    return {cache_id: CacheSize(int(n or 0), int(file_bytes or 0), int(nar_bytes or 0))
            for cache_id, n, file_bytes, nar_bytes in rows}


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def search_paths(session: AsyncSession, cache_id: int, query: str, *, offset: int,
                       limit: int) -> list[CachePath]:
    """Paths of the cache whose hash starts with ``query`` or whose name contains it,
    by store path; all of them (paged) for an empty query."""
    stmt = sa.select(CachePath).where(CachePath.cache_id == cache_id)
    query = query.strip().removeprefix("/nix/store/")
    if query:
        pattern = _escape_like(query)
        by_name = CachePath.store_path.like(f"%{pattern}%", escape="\\")
        if set(query) <= _NIX32 and len(query) <= 32:
            stmt = stmt.where(sa.or_(CachePath.store_hash.like(f"{pattern}%", escape="\\"),
                                     by_name))
        else:
            stmt = stmt.where(by_name)
    stmt = stmt.order_by(CachePath.store_path).offset(offset).limit(limit)
    return list(await session.scalars(stmt))


async def referrers(session: AsyncSession, cache_id: int, basename: str, limit: int
                    ) -> list[CachePath]:
    """Paths of the cache whose references name ``basename`` (itself excluded)."""
    words = sa.literal(" ") + CachePath.references + sa.literal(" ")
    stmt = (sa.select(CachePath)
            .where(CachePath.cache_id == cache_id,
                   words.like(f"% {_escape_like(basename)} %", escape="\\"),
                   CachePath.store_path != f"/nix/store/{basename}")
            .order_by(CachePath.store_path).limit(limit))
    return list(await session.scalars(stmt))


async def paths_by_basename(session: AsyncSession, cache_id: int, basenames: list[str]
                            ) -> dict[str, CachePath]:
    """Those of ``basenames`` the cache has, by basename (to link references)."""
    hashes = [b[:32] for b in basenames]
    if not hashes:
        return {}
    stmt = sa.select(CachePath).where(CachePath.cache_id == cache_id,
                                      CachePath.store_hash.in_(hashes))
    return {p.store_path.rsplit("/", 1)[-1]: p for p in await session.scalars(stmt)}


async def has_log(session: AsyncSession, cache_id: int, drv: str) -> bool:
    stmt = sa.select(BuildLog.id).where(BuildLog.cache_id == cache_id, BuildLog.drv == drv)
    return await session.scalar(stmt) is not None


async def retention_of(session: AsyncSession, cache_ids: Collection[int]
                       ) -> dict[int, float | None]:
    """The retention period (days; None: keep everything) of each of the caches."""
    rows = await session.execute(sa.select(Cache.id, Cache.retention_days)
                                 .where(Cache.id.in_(cache_ids)))
    return {cache_id: days for cache_id, days in rows}


async def set_retention(session: AsyncSession, cache_id: int, days: float | None) -> None:
    await session.execute(sa.update(Cache).where(Cache.id == cache_id)
                          .values(retention_days=days))


async def retained(session: AsyncSession) -> list[tuple[str, float]]:
    """(name, days) of every cache with a retention period."""
    rows = await session.execute(sa.select(Cache.name, Cache.retention_days)
                                 .where(Cache.retention_days.is_not(None))
                                 .order_by(Cache.name))
    return [(name, float(days)) for name, days in rows if days is not None]


async def running_jobs(session: AsyncSession) -> dict[int, list[int]]:
    """The ids of the jobs running now, by the runner running them."""
    rows = await session.execute(
        sa.select(Job.runner_id, Job.id)
        .where(Job.status == "running", Job.runner_id.is_not(None)).order_by(Job.id))
    found: dict[int, list[int]] = {}
    for runner_id, job_id in rows:
        if runner_id is not None:
            found.setdefault(runner_id, []).append(job_id)
    return found
