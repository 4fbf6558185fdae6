"""Queries of cache garbage collection (the algorithm is in ``nixfarm.cache.gc``).

Every bulk statement goes a thousand ids at a time (bound parameters stay well under
SQLite's and PostgreSQL's limits), and every delete repeats the condition that made its
rows garbage, so a row that changed since it was chosen (a path uploaded again, a NAR a
new path now uses) is left alone rather than removed on stale information.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from nixfarm.db.models import BuildLog, CacheNar, CachePath, Nar

_CHUNK = 1000
T = TypeVar("T")


def chunks(items: Sequence[T], size: int = _CHUNK) -> list[Sequence[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


@dataclass(frozen=True)
class PathRow:
    """What the closure computation needs of one path."""

    store_hash: str
    #: Hash parts of the referenced paths (self-references included).
    references: tuple[str, ...]
    deriver: str | None
    created_at: datetime
    nar_id: int


@dataclass(frozen=True)
class NarRow:
    id: int
    file_hash: str
    compression: str
    file_size: int
    storage_key: str


async def path_rows(session: AsyncSession, cache_id: int) -> list[PathRow]:
    """Every path of the cache, without signatures or store paths (not needed here)."""
    stmt = sa.select(
        CachePath.store_hash, CachePath.references, CachePath.deriver, CachePath.created_at,
        CachePath.nar_id,
    ).where(CachePath.cache_id == cache_id)
    rows = await session.stream(stmt)
    return [
        PathRow(h, tuple(r[:32] for r in refs.split()), deriver, created, nar_id)
        async for h, refs, deriver, created, nar_id in rows
    ]


async def delete_paths(session: AsyncSession, cache_id: int, hashes: Sequence[str],
                       before: datetime) -> list[str]:
    """Delete these paths if still uploaded before ``before``; the hashes deleted."""
    stmt = (
        sa.delete(CachePath)
        .where(CachePath.cache_id == cache_id, CachePath.store_hash.in_(hashes),
               CachePath.created_at < before)
        .returning(CachePath.store_hash)
        .execution_options(synchronize_session=False)
    )
    return list(await session.scalars(stmt))


async def old_logs(session: AsyncSession, cache_id: int, drvs: Sequence[str],
                   before: datetime) -> list[BuildLog]:
    stmt = sa.select(BuildLog).where(BuildLog.cache_id == cache_id, BuildLog.drv.in_(drvs),
                                     BuildLog.created_at < before)
    return list(await session.scalars(stmt))


async def delete_logs(session: AsyncSession, ids: Sequence[int], before: datetime
                      ) -> list[tuple[str, int]]:
    """Delete these logs unless uploaded again since; (storage key, size) of each deleted."""
    stmt = (
        sa.delete(BuildLog)
        .where(BuildLog.id.in_(ids), BuildLog.created_at < before)
        .returning(BuildLog.storage_key, BuildLog.size)
        .execution_options(synchronize_session=False)
    )
    return [(key, size) for key, size in await session.execute(stmt)]


async def orphan_nars(session: AsyncSession, cache_id: int, before: datetime) -> list[int]:
    """NARs uploaded into this cache, stored before ``before``, that no path uses."""
    used = sa.select(CachePath.id).where(CachePath.nar_id == Nar.id)
    stmt = (
        sa.select(Nar.id)
        .join(CacheNar, CacheNar.nar_id == Nar.id)
        .where(CacheNar.cache_id == cache_id, Nar.created_at < before, ~used.exists())
    )
    return list(await session.scalars(stmt))


async def nar_users(session: AsyncSession, nar_ids: Sequence[int]
                    ) -> list[tuple[int, int, str]]:
    """(nar id, cache id, store hash) of every path using one of these NARs."""
    stmt = sa.select(CachePath.nar_id, CachePath.cache_id, CachePath.store_hash).where(
        CachePath.nar_id.in_(nar_ids))
    return [(n, c, h) for n, c, h in await session.execute(stmt)]


async def nars_before(session: AsyncSession, nar_ids: Sequence[int], before: datetime
                      ) -> list[NarRow]:
    stmt = sa.select(Nar.id, Nar.file_hash, Nar.compression, Nar.file_size,
                     Nar.storage_key).where(Nar.id.in_(nar_ids), Nar.created_at < before)
    return [NarRow(*row) for row in await session.execute(stmt)]


async def delete_unused_nars(session: AsyncSession, nar_ids: Sequence[int]) -> list[NarRow]:
    """Delete these NARs (and their memberships) if no path uses them now; those deleted."""
    used = sa.select(CachePath.id).where(CachePath.nar_id == Nar.id)
    stmt = (
        sa.delete(Nar)
        .where(Nar.id.in_(nar_ids), ~used.exists())
        .returning(Nar.id, Nar.file_hash, Nar.compression, Nar.file_size, Nar.storage_key)
        .execution_options(synchronize_session=False)
    )
    return [NarRow(*row) for row in await session.execute(stmt)]


async def stored_file_hashes(session: AsyncSession, file_hashes: Sequence[str]) -> set[str]:
    """Those of ``file_hashes`` that have a NAR row (again: uploaded meanwhile)."""
    stmt = sa.select(Nar.file_hash).where(Nar.file_hash.in_(file_hashes))
    return set(await session.scalars(stmt))
