"""route certificates: an http route may carry its own TLS certificate (PEM chain) and private key

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("routes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("certificate", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("key", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("routes", schema=None) as batch_op:
        batch_op.drop_column("key")
        batch_op.drop_column("certificate")
