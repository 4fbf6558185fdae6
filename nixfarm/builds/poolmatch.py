"""Which queued jobs a builder pool takes (``[[builders.pools]]``, docs/builders.md).

Two places must agree on it: the claim of a builder's runner (it may take only its
pool's jobs) and the autoscaler (it creates builders for the jobs a pool would take).
Both use this module. A pool takes a job when the job's image is one of the pool's
``job_images``, its arch is the pool's (or unset), it carries every one of the pool's
``job_tags``, and the cache its manifest names, if any, is one of the pool's
``caches``. The last is not a column: it is checked on the candidates the query found.
"""

from __future__ import annotations

from collections.abc import Collection

import sqlalchemy as sa

from nixfarm.config import PoolSettings
from nixfarm.db.models import Job, JobTag
from nixfarm.errors import InvalidInput
from nixfarm.manifest import load_manifest


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


def cache_allowed(caches: Collection[str], job: Job) -> bool:
    """Whether the cache ``job`` pushes to (if any) is one of ``caches`` (a pool's, or
    none for a runner that may not push at all)."""
    try:
        cache = load_manifest(job.manifest).cache
    except InvalidInput:  # validated at submit; a job that no longer parses is nobody's
        return False
    return cache is None or cache in caches
