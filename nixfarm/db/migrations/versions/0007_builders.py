"""Jobs reserved for a builder pool, ``jobs.pool`` (docs/builders.md, "Pool jobs"), and
builders that failed to come up, ``builders.boot_failed`` (the pool's back-off).

Revision ID: 0007_builders
Revises: 0006_shell_schedules
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_builders"
down_revision: str | None = "0007_job_cache"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Null for every job queued before: they stay anyone's, as they were.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("pool", sa.String(length=40), nullable=True))
    # The server default fills the rows of builders made before; the model sets it.
    with op.batch_alter_table("builders") as batch:
        batch.add_column(sa.Column("boot_failed", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
    with op.batch_alter_table("builders") as batch:
        batch.alter_column("boot_failed", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("builders") as batch:
        batch.drop_column("boot_failed")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("pool")
