"""Which queued jobs a builder pool takes (``[[builders.pools]]``, docs/builders.md).

Several places must agree on it: the claim of a builder's runner (it may take only its
pool's jobs) and the autoscaler (it creates builders for the jobs a pool would take).
Both use this module. A pool takes a job when the job's image is one of the pool's
``job_images``, its arch is the pool's (or unset), it carries every one of the pool's
``job_tags``, and the cache its manifest names (``Job.cache``), if any, is one of the
pool's ``caches``.

Pool jobs. A job can be *reserved* for one pool (``Job.pool``, decided at submit by
``reserved_pool``): the first configured pool whose ``job_tags`` (at least one) the
job carries and that takes it, or, for a release (``nixfarm release``, which targets a
pool whether or not the pool asks for tags), the pool named or else the first pool
that takes it. Only that pool's builders claim it (``claimable_by``): not the
embedded runner, not other runners, not another pool's builders; and only that
pool's autoscaler counts it. A job reserved for a pool that is no longer configured
is anyone's again (nobody would ever create a builder for it).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from nixfarm.config import PoolSettings
from nixfarm.db.models import Builder, Job, JobTag
from nixfarm.errors import InvalidInput


def conditions(pool: PoolSettings) -> list[sa.ColumnElement[bool]]:
    """The SQL conditions on ``Job`` of the jobs ``pool`` may take (but for caches)."""
    out: list[sa.ColumnElement[bool]] = [
        Job.image.in_(pool.job_images),
        sa.or_(Job.arch.is_(None), Job.arch == pool.arch),
    ]
    for tag in pool.job_tags:
        out.append(Job.id.in_(sa.select(JobTag.job_id).where(JobTag.tag == tag)))
    if not pool.trusted:
        # Never hand secrets to a machine the pool does not trust: such a job waits.
        out.append(sa.func.json_array_length(Job.secret_ids) == 0)
    return out


def may_push(caches: Collection[str]) -> sa.ColumnElement[bool]:
    """The SQL condition on ``Job`` that the cache it pushes to (if any) is one of
    ``caches`` (a pool's, or none for a runner that may not push at all)."""
    return sa.or_(Job.cache.is_(None), Job.cache.in_(caches))


def claimable_by(pool: str | None, configured: Collection[str]) -> sa.ColumnElement[bool]:
    """The SQL condition on ``Job`` of the jobs reserved for nobody else than ``pool``
    (a builder's pool; None: a runner that is no builder), ``configured`` being the
    names of the pools configured now."""
    if pool is not None:
        return sa.or_(Job.pool.is_(None), Job.pool == pool)
    if not configured:
        return sa.true()
    return sa.or_(Job.pool.is_(None), Job.pool.not_in(list(configured)))


async def takes(s: AsyncSession, pool: PoolSettings, job: Job) -> bool:
    """Whether ``pool`` takes ``job`` (flushed, its tags included)."""
    found = await s.scalar(sa.select(Job.id).where(
        Job.id == job.id, *conditions(pool), may_push(pool.caches)))
    return found is not None


async def reserved_pool(s: AsyncSession, pools: Sequence[PoolSettings], job: Job, *,
                        release: bool = False, named: str | None = None) -> str | None:
    """The pool a new job is reserved for (see the module's notes), or None.

    ``named``: the pool asked for (a release's ``--pool``); InvalidInput when no such
    pool is configured or it does not take the job, saying which.
    """
    if named is not None:
        pool = next((p for p in pools if p.name == named), None)
        if pool is None:
            raise InvalidInput(f"there is no builder pool {named!r} in this farm's "
                               "configuration", field="pool")
        if not await takes(s, pool, job):
            raise InvalidInput(
                f"pool {named} does not take this job: it takes jobs of the images "
                f"{', '.join(pool.job_images)} (arch {pool.arch})"
                + (f", tagged {', '.join(pool.job_tags)}" if pool.job_tags else "")
                + (f", pushing to {', '.join(pool.caches)} or no cache" if pool.caches
                   else ", pushing to no cache")
                + ("" if pool.trusted else ", without secrets"), field="pool")
        return named
    for pool in pools:
        if (pool.job_tags or release) and await takes(s, pool, job):
            return pool.name
    return None


def one_job(pool: PoolSettings) -> bool:
    """Whether the pool's builders take one job each (all life cycles but keep-always)."""
    return pool.lifecycle != "keep-always"


def builder_open(pool: PoolSettings) -> list[sa.ColumnElement[bool]]:
    """The SQL conditions on ``Builder`` of a builder of ``pool`` that still takes a
    job: it is ready, and it has not taken the one job its pool gives it."""
    out: list[sa.ColumnElement[bool]] = [Builder.state == "ready"]
    if one_job(pool):
        out.append(Builder.last_job_id.is_(None))
    return out


def builder_takes_jobs(builder: Builder, pool: PoolSettings | None) -> bool:
    """``builder_open`` on a builder read (None: its pool is no longer configured)."""
    return pool is not None and builder.state == "ready" and not (
        one_job(pool) and builder.last_job_id is not None)
