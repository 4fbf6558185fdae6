"""A cache's retention period: garbage collection keeps what was uploaded within it.

Revision ID: 0006_cache_retention
Revises: 0006_web_sessions
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_cache_retention"
down_revision: str | None = "0006_web_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing caches keep everything, as before.
    with op.batch_alter_table("caches") as batch:
        batch.add_column(sa.Column("retention_days", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("caches") as batch:
        batch.drop_column("retention_days")
