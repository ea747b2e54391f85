"""log drains: an app's lines shipped to a syslog (TCP) or HTTP(S) endpoint, with a delivery cursor

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drains",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("app_id", sa.String(length=36), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("cursor", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["app_id"], ["apps.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("app_id", "url", name="uq_drains_app_url"),
    )
    with op.batch_alter_table("drains", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_drains_app_id"), ["app_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("drains", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_drains_app_id"))
    op.drop_table("drains")
