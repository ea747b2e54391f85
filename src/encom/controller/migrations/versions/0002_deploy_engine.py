"""deploy engine: deploy settings move to app meta; deployments remember the old counts and the release job

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No user could set apps.strategy before this revision: every row holds the old default, so it is dropped
    # rather than copied into meta (where the strategy lives from now on).
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.drop_column("strategy")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("old_processes", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("release_job_id", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("release_job_id")
        batch_op.drop_column("old_processes")
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("strategy", sa.String(length=32), nullable=False, server_default="all-at-once"))
