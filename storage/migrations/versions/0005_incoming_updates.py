"""incoming_updates: updates a chat platform pushes to any of the processes (a webhook
behind a load balancer), stored once, claimed with a lease, handled once in order per chat

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 16:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "incoming_updates",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("update_id", sa.BigInteger(), nullable=False),
        sa.Column("chat", sa.String(length=64), nullable=False),
        sa.Column("raw", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("claimed_until", sa.Float(), nullable=False),
        sa.Column("done_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source", "update_id", name="uq_incoming_updates_id"),
    )
    op.create_index(
        "ix_incoming_updates_open",
        "incoming_updates",
        ["source", "done_at", "update_id"],
        unique=False,
    )
    op.create_index(
        "ix_incoming_updates_received", "incoming_updates", ["received_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_incoming_updates_received", table_name="incoming_updates")
    op.drop_index("ix_incoming_updates_open", table_name="incoming_updates")
    op.drop_table("incoming_updates")
