"""SSH sessions into held sandboxes (``nixfarm ssh``, docs/jobs.md): a shell session
with a public key is a byte stream to the sandbox's sshd, authorised by that key.

Revision ID: 0008_ssh
Revises: 0007_builders
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_ssh"
down_revision: str | None = "0007_builders"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("shell_sessions") as batch:
        batch.add_column(sa.Column("public_key", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("shell_sessions") as batch:
        batch.drop_column("public_key")
