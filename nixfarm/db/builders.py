"""Queries on builders and the decisions about them."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from nixfarm.db.models import Builder, BuilderDecision, BuilderLease, utcnow
from nixfarm.errors import NotFound

#: States of a builder whose machine exists (or is being made).
LIVE = ("creating", "booting", "ready", "draining", "held")


async def get_builder(session: AsyncSession, builder_id: int) -> Builder:
    builder = await session.get(Builder, builder_id)
    if builder is None:
        raise NotFound(f"There is no builder {builder_id}.", kind="builder",
                       name=str(builder_id))
    return builder


async def builder_of_token(session: AsyncSession, token_id: int) -> Builder | None:
    """The builder that enrolled for this runner token, if one did."""
    found: Builder | None = await session.scalar(
        sa.select(Builder).where(Builder.token_id == token_id))
    return found


async def live_builders(session: AsyncSession, pool: str | None = None) -> list[Builder]:
    stmt = sa.select(Builder).where(Builder.state.in_(LIVE)).order_by(Builder.id)
    if pool is not None:
        stmt = stmt.where(Builder.pool == pool)
    return list(await session.scalars(stmt))


async def list_builders(session: AsyncSession, *, include_destroyed: bool = False,
                        pool: str | None = None, limit: int = 200) -> list[Builder]:
    """Builders newest first."""
    stmt = sa.select(Builder).order_by(Builder.id.desc()).limit(limit)
    if not include_destroyed:
        stmt = stmt.where(Builder.state.in_(LIVE))
    if pool is not None:
        stmt = stmt.where(Builder.pool == pool)
    return list(await session.scalars(stmt))


async def update_builder_if(session: AsyncSession, builder_id: int,
                            when: str | tuple[str, ...], **values: object) -> bool:
    """Set ``values`` if the builder is in state ``when`` (one or several); whether it
    did."""
    states = (when,) if isinstance(when, str) else when
    result = await session.execute(
        sa.update(Builder).where(Builder.id == builder_id, Builder.state.in_(states))
        .values(**values).execution_options(synchronize_session=False))
    changed: bool = result.rowcount == 1  # type: ignore[attr-defined]
    return changed


async def record(session: AsyncSession, pool: str, action: str, reason: str,
                 builder_id: int | None = None) -> BuilderDecision:
    decision = BuilderDecision(pool=pool, builder_id=builder_id, action=action,
                               reason=reason, created_at=utcnow())
    session.add(decision)
    await session.flush()
    return decision


async def decisions(session: AsyncSession, *, pool: str | None = None,
                    builder_id: int | None = None, limit: int = 100) -> list[BuilderDecision]:
    """Decisions newest first."""
    stmt = sa.select(BuilderDecision).order_by(BuilderDecision.id.desc()).limit(limit)
    if pool is not None:
        stmt = stmt.where(BuilderDecision.pool == pool)
    if builder_id is not None:
        stmt = stmt.where(BuilderDecision.builder_id == builder_id)
    return list(await session.scalars(stmt))


async def take_lease(session: AsyncSession, name: str, holder: str,
                     length: timedelta) -> bool:
    """Take or renew the lease ``name`` for ``holder``; whether it holds it now. One
    conditional UPDATE (it is ours, or it ran out), else an INSERT that fails on the
    primary key when another holder made the row meanwhile."""
    now = utcnow()
    result = await session.execute(
        sa.update(BuilderLease).where(
            BuilderLease.name == name,
            sa.or_(BuilderLease.holder == holder, BuilderLease.expires_at < now))
        .values(holder=holder, expires_at=now + length)
        .execution_options(synchronize_session=False))
    if result.rowcount == 1:  # type: ignore[attr-defined]
        return True
    if await session.get(BuilderLease, name) is not None:
        return False
    try:
        async with session.begin_nested():
            session.add(BuilderLease(name=name, holder=holder, expires_at=now + length))
    except sa.exc.IntegrityError:
        return False
    return True


async def drop_lease(session: AsyncSession, name: str, holder: str) -> None:
    await session.execute(sa.delete(BuilderLease).where(
        BuilderLease.name == name, BuilderLease.holder == holder))
