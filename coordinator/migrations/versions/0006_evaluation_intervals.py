"""Evaluations carry the 95% confidence interval of their value.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 00:30:00.000000

Additive only: rows written before have no interval (NULL), which the API shows as null.
"""

from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('evaluations', sa.Column('ci_low', sa.Float(), nullable=True))
    op.add_column('evaluations', sa.Column('ci_high', sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column('evaluations', 'ci_high')
    op.drop_column('evaluations', 'ci_low')
