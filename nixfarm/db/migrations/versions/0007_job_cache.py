"""jobs.cache: the cache a job's manifest pushes to, as a column, so that a runner's
claim passes over the jobs it may not push for in SQL. Filled in from each job's
manifest (``cache:``).

Revision ID: 0007_job_cache
Revises: 0006_shell_schedules
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from nixfarm.errors import InvalidInput
from nixfarm.manifest import load_manifest

revision: str = "0007_job_cache"
down_revision: str | None = "0006_shell_schedules"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 500


def _cache_of(manifest: str) -> str | None:
    """The manifest's ``cache:`` read as submit reads it; None when it names none, or
    when the manifest no longer parses (the claims passed over such a job before:
    with no cache it is taken, and fails at its runner's own parse)."""
    try:
        return load_manifest(manifest).cache
    except InvalidInput:
        return None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("cache", sa.String(length=63), nullable=True))
    jobs = sa.table("jobs", sa.column("id", sa.Integer()), sa.column("manifest", sa.Text()),
                    sa.column("cache", sa.String(63)))
    conn = op.get_bind()
    # Only manifests that mention a cache can name one: the others keep NULL.
    last = 0
    while True:
        rows = conn.execute(
            sa.select(jobs.c.id, jobs.c.manifest)
            .where(jobs.c.id > last, jobs.c.manifest.contains("cache"))
            .order_by(jobs.c.id).limit(_BATCH)).all()
        if not rows:
            break
        for job_id, manifest in rows:
            cache = _cache_of(manifest)
            if cache is not None:
                conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(cache=cache))
        last = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("cache")
