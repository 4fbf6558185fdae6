"""Queries on binary caches (the ``caches`` table); names follow ``nixfarm.naming``."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from nixfarm.db.models import Cache
from nixfarm.db.upsert import insert
from nixfarm.errors import Conflict, NotFound
from nixfarm.naming import check_cache_name


async def create_cache(
    session: AsyncSession,
    name: str,
    private: bool,
    secret_key: str,
    public_key: str,
    priority: int = 40,
) -> Cache:
    """Create a cache; ``Conflict`` if one of that name exists."""
    check_cache_name(name)
    # ON CONFLICT rather than look-then-insert: of two concurrent creates, exactly one
    # gets the row back and the other sees None, without an error to recover from.
    stmt = (
        insert(session, Cache)
        .values(
            name=name,
            private=private,
            secret_key=secret_key,
            public_key=public_key,
            priority=priority,
        )
        .on_conflict_do_nothing(index_elements=[Cache.name])
        .returning(Cache)
    )
    cache = await session.scalar(stmt)
    if cache is None:
        raise Conflict(f"A cache named {name!r} already exists.")
    return cache


async def get_cache(session: AsyncSession, name: str) -> Cache:
    """The cache called ``name``; ``NotFound`` if there is none."""
    cache = await session.scalar(sa.select(Cache).where(Cache.name == name))
    if cache is None:
        raise NotFound(f"There is no cache named {name!r}.", kind="cache", name=name)
    return cache


async def list_caches(session: AsyncSession) -> list[Cache]:
    """All caches, by name."""
    return list(await session.scalars(sa.select(Cache).order_by(Cache.name)))
