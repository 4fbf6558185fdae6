"""The binary-cache tables and API tokens.

Revision ID: 0001
Revises: nothing
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "caches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("private", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("secret_key", sa.Text(), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), server_default=sa.text("40"), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_caches")),
        sa.UniqueConstraint("name", name=op.f("uq_caches_name")),
    )
    op.create_table(
        "nars",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("file_hash", sa.String(length=80), nullable=False),
        sa.Column("file_size", sa.BigInteger(), nullable=False),
        sa.Column("compression", sa.String(length=16), nullable=False),
        sa.Column("nar_hash", sa.String(length=80), nullable=False),
        sa.Column("nar_size", sa.BigInteger(), nullable=False),
        sa.Column("storage_key", sa.Text(), nullable=False),
        _timestamp("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nars")),
        sa.UniqueConstraint("file_hash", name=op.f("uq_nars_file_hash")),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        _timestamp("created_at"),
        _timestamp("expires_at", nullable=True),
        sa.Column("revoked", sa.Boolean(), server_default=sa.false(), nullable=False),
        _timestamp("last_used_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tokens")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_tokens_secret_hash")),
    )
    op.create_table(
        "build_logs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cache_id", sa.Integer(), nullable=False),
        sa.Column("drv", sa.Text(), nullable=False),
        sa.Column("storage_key", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["cache_id"],
            ["caches.id"],
            name=op.f("fk_build_logs_cache_id_caches"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_build_logs")),
        sa.UniqueConstraint("cache_id", "drv", name=op.f("uq_build_logs_cache_id_drv")),
    )
    op.create_table(
        "cache_nars",
        sa.Column("cache_id", sa.Integer(), nullable=False),
        sa.Column("nar_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["cache_id"],
            ["caches.id"],
            name=op.f("fk_cache_nars_cache_id_caches"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["nar_id"], ["nars.id"], name=op.f("fk_cache_nars_nar_id_nars"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("cache_id", "nar_id", name=op.f("pk_cache_nars")),
    )
    op.create_index(op.f("ix_cache_nars_nar_id"), "cache_nars", ["nar_id"])
    op.create_table(
        "cache_paths",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cache_id", sa.Integer(), nullable=False),
        sa.Column("store_hash", sa.String(length=32), nullable=False),
        sa.Column("store_path", sa.Text(), nullable=False),
        sa.Column("nar_id", sa.Integer(), nullable=False),
        sa.Column("nar_hash", sa.String(length=80), nullable=False),
        sa.Column("nar_size", sa.BigInteger(), nullable=False),
        sa.Column("references", sa.Text(), nullable=False),
        sa.Column("deriver", sa.Text(), nullable=True),
        sa.Column("ca", sa.Text(), nullable=True),
        sa.Column("sigs", sa.Text(), nullable=False),
        _timestamp("created_at"),
        sa.ForeignKeyConstraint(
            ["cache_id"],
            ["caches.id"],
            name=op.f("fk_cache_paths_cache_id_caches"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["nar_id"], ["nars.id"], name=op.f("fk_cache_paths_nar_id_nars")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cache_paths")),
        sa.UniqueConstraint(
            "cache_id", "store_hash", name=op.f("uq_cache_paths_cache_id_store_hash")
        ),
    )
    op.create_index(op.f("ix_cache_paths_nar_id"), "cache_paths", ["nar_id"])


def downgrade() -> None:
    op.drop_table("cache_paths")
    op.drop_table("cache_nars")
    op.drop_table("build_logs")
    op.drop_table("tokens")
    op.drop_table("nars")
    op.drop_table("caches")
