"""Shells into held sandboxes (jobs.held_until, shell_sessions) and scheduled jobs
(schedules).

Revision ID: 0006_shell_schedules
Revises: 0006_builders
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_shell_schedules"
down_revision: str | None = "0006_builders"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("held_until", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "shell_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("command", sa.JSON(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("cols", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE",
                                name=op.f("fk_shell_sessions_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shell_sessions")),
        sa.UniqueConstraint("key", name=op.f("uq_shell_sessions_key")),
    )
    op.create_index(op.f("ix_shell_sessions_job_id"), "shell_sessions", ["job_id"])
    op.create_table(
        "schedules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("owner_name", sa.String(length=100), nullable=False),
        sa.Column("cron", sa.String(length=200), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("last_slot", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_job_id", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
    )
    op.create_index(op.f("ix_schedules_owner_id"), "schedules", ["owner_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_schedules_owner_id"), table_name="schedules")
    op.drop_table("schedules")
    op.drop_index(op.f("ix_shell_sessions_job_id"), table_name="shell_sessions")
    op.drop_table("shell_sessions")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("held_until")
