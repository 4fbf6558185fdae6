"""Runners install scheduled image builds: schedules.image/image_arch (an admin's image
rebuild), jobs.rebuilds_image/rebuilds_arch (set by the server on such a schedule's
jobs) artifacts.sha256 (the runner checks what it downloads) and runners.image_builds
(which build each runner has installed).

Revision ID: 0009_imageauto
Revises: 0008_ssh
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_imageauto"
down_revision: str | None = "0008_ssh"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runners") as batch:
        batch.add_column(sa.Column("image_builds", sa.JSON(), nullable=True))
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(sa.Column("image", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("image_arch", sa.String(length=32), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("rebuilds_image", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("rebuilds_arch", sa.String(length=32), nullable=True))
        batch.create_index("ix_jobs_rebuilds_image", ["rebuilds_image"])
    with op.batch_alter_table("artifacts") as batch:
        batch.add_column(sa.Column("sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_column("sha256")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_rebuilds_image")
        batch.drop_column("rebuilds_arch")
        batch.drop_column("rebuilds_image")
    with op.batch_alter_table("schedules") as batch:
        batch.drop_column("image_arch")
        batch.drop_column("image")
    with op.batch_alter_table("runners") as batch:
        batch.drop_column("image_builds")
