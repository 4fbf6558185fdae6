"""Queries on what caches hold: NAR files, store paths (narinfos) and build logs.

The order an upload happens in, and the query each step uses:

    PUT nar/<file hash>.nar.zst   add_nar (shared, idempotent) + link_nar_to_cache
    PUT <store hash>.narinfo      cache_nar (is that NAR in *this* cache?) + put_path
    GET <store hash>.narinfo      get_path (the NAR's URL, hash and size come along)
    GET nar/<file hash>.nar.zst   cache_nar
    PUT log/<drv>                 put_log

A NAR's file is stored once however many caches it is uploaded to, but a cache can
only serve or reference the NARs uploaded into it: otherwise knowing a file hash
would be enough to read another (private) cache's NAR.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from nixfarm.db.models import BuildLog, CacheNar, CachePath, Nar, utcnow
from nixfarm.db.upsert import insert
from nixfarm.errors import IntegrityError, InvalidInput
from nixfarm.nix import nix32
from nixfarm.nix.compression import EXTENSIONS
from nixfarm.nix.storepath import DRV_BASENAME

_NIX32 = nix32.ALPHABET
_HASH = re.compile(f"sha256:[{_NIX32}]{{52}}")
_STORE_PATH = re.compile(f"/.+/([{_NIX32}]{{32}})-[A-Za-z0-9+._?=-]+")

# Bound parameters per IN (...) query: well under SQLite's 32766 and PostgreSQL's
# 65535, and large enough that a 10,000-path closure takes a handful of queries.
_CHUNK = 1000


def _check_hash(value: str, field: str) -> None:
    if not _HASH.fullmatch(value):
        raise InvalidInput(f"{field} {value!r} is not a sha256:<nix32> hash.", field=field)


def store_hash_of(store_path: str) -> str:
    """The 32-character hash part of a full store path; ``InvalidInput`` if malformed."""
    match = _STORE_PATH.fullmatch(store_path)
    if match is None:
        raise InvalidInput(f"{store_path!r} is not a store path.", field="store_path")
    return match.group(1)


# -- NAR files -------------------------------------------------------------------------


async def get_nar_by_file_hash(session: AsyncSession, file_hash: str) -> Nar | None:
    """The stored NAR with this file hash, in whatever cache."""
    return await session.scalar(sa.select(Nar).where(Nar.file_hash == file_hash))


async def add_nar(
    session: AsyncSession,
    *,
    file_hash: str,
    file_size: int,
    compression: str,
    nar_hash: str,
    nar_size: int,
    storage_key: str,
) -> Nar:
    """Record a verified NAR file; if one with this file hash exists, return that one.

    When the returned ``storage_key`` differs from the one given, the file was already
    stored and the caller's new copy is redundant (it may delete it).
    """
    _check_hash(file_hash, "file_hash")
    _check_hash(nar_hash, "nar_hash")
    if compression not in EXTENSIONS:
        raise InvalidInput(f"Unknown compression {compression!r}.", field="compression")
    stmt = (
        insert(session, Nar)
        .values(
            file_hash=file_hash,
            file_size=file_size,
            compression=compression,
            nar_hash=nar_hash,
            nar_size=nar_size,
            storage_key=storage_key,
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=[Nar.file_hash])
    )
    await session.execute(stmt)
    nar = await get_nar_by_file_hash(session, file_hash)
    assert nar is not None
    # Same file, same contents: a different NAR hash means the caller computed wrongly.
    if (nar.nar_hash, nar.nar_size) != (nar_hash, nar_size):
        raise IntegrityError(
            f"NAR file {file_hash} is already stored with a different NAR hash or size.",
            field="nar_hash",
            expected=f"{nar.nar_hash} {nar.nar_size}",
            actual=f"{nar_hash} {nar_size}",
        )
    return nar


async def link_nar_to_cache(session: AsyncSession, cache_id: int, nar_id: int) -> None:
    """Make the NAR part of the cache (idempotent)."""
    stmt = (
        insert(session, CacheNar)
        .values(cache_id=cache_id, nar_id=nar_id)
        .on_conflict_do_nothing(index_elements=[CacheNar.cache_id, CacheNar.nar_id])
    )
    await session.execute(stmt)


async def cache_nar(session: AsyncSession, cache_id: int, file_hash: str) -> Nar | None:
    """The NAR with this file hash if it was uploaded into this cache, else None."""
    stmt = (
        sa.select(Nar)
        .join(CacheNar, CacheNar.nar_id == Nar.id)
        .where(CacheNar.cache_id == cache_id, Nar.file_hash == file_hash)
    )
    return await session.scalar(stmt)


# -- store paths -----------------------------------------------------------------------


async def get_path(session: AsyncSession, cache_id: int, store_hash: str) -> CachePath | None:
    """The narinfo of a store path in a cache, with its NAR loaded."""
    stmt = (
        sa.select(CachePath)
        .where(CachePath.cache_id == cache_id, CachePath.store_hash == store_hash)
        # A replaced path must not come back as the stale object in the session.
        .execution_options(populate_existing=True)
    )
    return await session.scalar(stmt)


async def put_path(
    session: AsyncSession,
    cache_id: int,
    *,
    store_path: str,
    nar: Nar,
    references: Sequence[str] = (),
    deriver: str | None = None,
    ca: str | None = None,
    sigs: Sequence[str] = (),
) -> CachePath:
    """Insert or replace a store path's narinfo in a cache.

    ``references`` and ``deriver`` are basenames. The caller has checked that ``nar``
    belongs to this cache (``cache_nar``) and signed the path.
    """
    store_hash = store_hash_of(store_path)
    values = {
        "store_path": store_path,
        "nar_id": nar.id,
        "nar_hash": nar.nar_hash,
        "nar_size": nar.nar_size,
        "references": " ".join(references),
        "deriver": deriver,
        "ca": ca,
        "sigs": " ".join(sigs),
        "created_at": utcnow(),
    }
    stmt = (
        insert(session, CachePath)
        .values(cache_id=cache_id, store_hash=store_hash, **values)
        .on_conflict_do_update(
            index_elements=[CachePath.cache_id, CachePath.store_hash], set_=values
        )
    )
    await session.execute(stmt)
    path = await get_path(session, cache_id, store_hash)
    assert path is not None
    return path


async def missing_hashes(session: AsyncSession, cache_id: int, hashes: Sequence[str]) -> list[str]:
    """Those of ``hashes`` (store hash parts) the cache has no path for.

    In the order given, without duplicates: the answer to "which of this closure do I
    still have to upload?", one query per thousand hashes.
    """
    wanted = list(dict.fromkeys(hashes))
    present: set[str] = set()
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        stmt = sa.select(CachePath.store_hash).where(
            CachePath.cache_id == cache_id, CachePath.store_hash.in_(chunk)
        )
        present.update(await session.scalars(stmt))
    return [h for h in wanted if h not in present]


async def count_paths(session: AsyncSession, cache_id: int) -> int:
    stmt = sa.select(sa.func.count()).where(CachePath.cache_id == cache_id)
    return await session.scalar(stmt) or 0


# -- build logs ------------------------------------------------------------------------


async def put_log(
    session: AsyncSession, cache_id: int, drv: str, storage_key: str, size: int
) -> BuildLog:
    """Insert or replace the build log of ``drv`` (a ``.drv`` basename) in a cache."""
    if not DRV_BASENAME.fullmatch(drv):
        raise InvalidInput(f"{drv!r} is not a derivation's basename.", field="drv")
    values = {"storage_key": storage_key, "size": size, "created_at": utcnow()}
    stmt = (
        insert(session, BuildLog)
        .values(cache_id=cache_id, drv=drv, **values)
        .on_conflict_do_update(index_elements=[BuildLog.cache_id, BuildLog.drv], set_=values)
    )
    await session.execute(stmt)
    log = await get_log(session, cache_id, drv)
    assert log is not None
    return log


async def get_log(session: AsyncSession, cache_id: int, drv: str) -> BuildLog | None:
    stmt = (
        sa.select(BuildLog)
        .where(BuildLog.cache_id == cache_id, BuildLog.drv == drv)
        .execution_options(populate_existing=True)
    )
    return await session.scalar(stmt)
