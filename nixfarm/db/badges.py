"""The query behind status badges: the newest public job carrying some tags.

A badge is fetched anonymously (a README on another site embeds it), so only public jobs
count: an unlisted or private job never changes a badge, and a tag used only by private
jobs looks the same as a tag nobody used.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from nixfarm.db.models import Job, JobTag

#: Statuses a job ends with: a badge shows the newest of these rather than a job that is
#: still queued or running (whose result is not known yet).
ENDED = ("success", "failed", "timeout", "cancelled", "interrupted")


async def public_status(session: AsyncSession, tags: Sequence[str]) -> tuple[int, str] | None:
    """(id, status) of the newest ended public job carrying every one of ``tags``, else of
    the newest such job whatever its status; None when there is none."""
    stmt = sa.select(Job.id, Job.status).where(Job.visibility == "public")
    for tag in dict.fromkeys(tags):
        stmt = stmt.where(Job.id.in_(sa.select(JobTag.job_id).where(JobTag.tag == tag)))
    for candidates in (stmt.where(Job.status.in_(ENDED)), stmt):
        row = (await session.execute(candidates.order_by(Job.id.desc()).limit(1))).first()
        if row is not None:
            return int(row[0]), str(row[1])
    return None
