"""Pruning sources: the global adapters whose merge chose what a job's pruned tiers keep.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 15:00:00.000000

Additive only: a new table, empty for jobs that existed before (their pruned tiers were pruned
from the base alone, as a tier without ``prune_importance_adapter`` still is).
"""

from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'pruning_sources',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=False),
        sa.Column('prune_ratio', sa.Float(), nullable=False),
        sa.Column('round', sa.Integer(), nullable=False),
        sa.Column('adapter_sha256', sa.String(length=64), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('job_id', 'prune_ratio', 'round'),
    )
    op.create_index('ix_pruning_sources_job_id', 'pruning_sources', ['job_id'])


def downgrade() -> None:
    op.drop_index('ix_pruning_sources_job_id', table_name='pruning_sources')
    op.drop_table('pruning_sources')
