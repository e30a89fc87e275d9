"""Index for listing deployments newest first.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch_op:
        batch_op.create_index("ix_deployments_requested_at_id", ["requested_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch_op:
        batch_op.drop_index("ix_deployments_requested_at_id")
