"""Updates record the LoRA rank they use (HetLoRA's rank self-pruning lowers it).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 12:00:00.000000

Additive only: updates stored before have no recorded rank (NULL).
"""

from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('updates', sa.Column('effective_rank', sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column('updates', 'effective_rank')
