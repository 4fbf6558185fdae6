"""How a runner's VMs run: its accelerator (kvm, tcg), or "" without VMs.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The server default fills rows of runners registered before; the model sets it.
    with op.batch_alter_table("runners") as batch:
        batch.add_column(sa.Column("accelerator", sa.String(length=32), nullable=False,
                                   server_default=""))
    with op.batch_alter_table("runners") as batch:
        batch.alter_column("accelerator", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("runners") as batch:
        batch.drop_column("accelerator")
