"""second wave: jobs.lost_runs (process deaths that are not the job's fault),
jobs.provider_cost/provider_cost_unit (what a provider billed), and outbox.audience
(deliveries bound to the process that serves one person)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 08:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("lost_runs", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("provider_cost", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("provider_cost_unit", sa.String(length=16), nullable=True))
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("audience", sa.String(length=160), nullable=True))
    op.create_index(
        "ix_outbox_audience",
        "outbox",
        ["status", "platform", "audience", "next_try", "id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_audience", table_name="outbox")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("audience")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("provider_cost_unit")
        batch_op.drop_column("provider_cost")
        batch_op.drop_column("lost_runs")
