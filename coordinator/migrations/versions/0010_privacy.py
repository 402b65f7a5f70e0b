"""Client-level differential privacy: a job's privacy settings and each global adapter's epsilon.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 01:00:00.000000

Additive only: both columns are nullable; jobs that existed before have no privacy settings
(their adapters no epsilon), as a job created without ``privacy`` still has.
"""

from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('privacy', sa.JSON(none_as_null=True), nullable=True))
    op.add_column('global_adapters', sa.Column('epsilon', sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column('global_adapters', 'epsilon')
    op.drop_column('jobs', 'privacy')
