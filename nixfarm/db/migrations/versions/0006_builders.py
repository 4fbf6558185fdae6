"""Ephemeral builders: the machines of builder pools, the decisions about them, and
the lease of the server that runs the autoscaler.

Revision ID: 0006_builders
Revises: 0006_cache_retention
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_builders"
down_revision: str | None = "0006_cache_retention"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "builders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("pool", sa.String(length=40), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("instance_id", sa.String(length=128), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("plan", sa.String(length=64), nullable=False),
        sa.Column("hourly_price", sa.Double(), nullable=False),
        sa.Column("enroll_hash", sa.String(length=64), nullable=True),
        sa.Column("enroll_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("token_id", sa.Integer(), nullable=True),
        sa.Column("last_job_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("idle_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("hold_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_builders")),
        sa.UniqueConstraint("enroll_hash", name=op.f("uq_builders_enroll_hash")),
    )
    op.create_index(op.f("ix_builders_pool"), "builders", ["pool"])
    op.create_index(op.f("ix_builders_instance_id"), "builders", ["instance_id"])
    op.create_index(op.f("ix_builders_state"), "builders", ["state"])
    op.create_index(op.f("ix_builders_token_id"), "builders", ["token_id"])
    op.create_table(
        "builder_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pool", sa.String(length=40), nullable=False),
        sa.Column("builder_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["builder_id"], ["builders.id"],
                                name=op.f("fk_builder_decisions_builder_id_builders"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_builder_decisions")),
    )
    op.create_index(op.f("ix_builder_decisions_pool"), "builder_decisions", ["pool"])
    op.create_index(op.f("ix_builder_decisions_builder_id"), "builder_decisions",
                    ["builder_id"])
    op.create_table(
        "builder_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_builder_leases")),
    )


def downgrade() -> None:
    op.drop_table("builder_leases")
    op.drop_table("builder_decisions")
    op.drop_table("builders")
