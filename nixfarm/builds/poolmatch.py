"""Which queued jobs a builder pool takes (``[[builders.pools]]``, docs/builders.md).

Two places must agree on it: the claim of a builder's runner (it may take only its
pool's jobs) and the autoscaler (it creates builders for the jobs a pool would take).
Both use this module. A pool takes a job when the job's image is one of the pool's
``job_images``, its arch is the pool's (or unset), it carries every one of the pool's
``job_tags``, and the cache its manifest names (``Job.cache``), if any, is one of the
pool's ``caches``.
"""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa

from nixfarm.config import PoolSettings
from nixfarm.db.models import Job, JobTag


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
