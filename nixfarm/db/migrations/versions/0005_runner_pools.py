"""Runner pools: a token's allowed images and job owners, and whether it is trusted
with secrets.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing tokens keep today's behaviour: no pool, trusted.
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("runner_images", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("runner_owners", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("trusted", sa.Boolean(), nullable=False,
                                   server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.drop_column("trusted")
        batch.drop_column("runner_owners")
        batch.drop_column("runner_images")
