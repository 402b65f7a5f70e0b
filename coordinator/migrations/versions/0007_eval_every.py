"""Jobs may score only every ``eval_every``-th global adapter (round 0 and the last always).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 04:00:00.000000

Additive only: existing jobs get ``eval_every`` 1 (every round scored, as before).
"""

from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('eval_every', sa.Integer(), server_default='1', nullable=False))


def downgrade() -> None:
    op.drop_column('jobs', 'eval_every')
