"""Rejected uploads are logged (for the dashboard); jobs may be paused.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 12:00:00.000000

Additive only: a new ``rejections`` table. The ``paused`` job status is a new string value
of ``jobs.status`` and needs no schema change.
"""

from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'rejections',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('task_id', sa.Integer(), nullable=False),
        sa.Column('round_id', sa.Integer(), nullable=False),
        sa.Column('device_id', sa.Integer(), nullable=False),
        sa.Column('code', sa.String(length=50), nullable=False),
        sa.Column('message', sa.Text(), nullable=False),
        sa.Column('status', sa.Integer(), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('received_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['device_id'], ['devices.id'], name=op.f('fk_rejections_device_id_devices')),
        sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], name=op.f('fk_rejections_round_id_rounds')),
        sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_rejections_task_id_tasks')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_rejections')),
    )
    for column in ('task_id', 'round_id', 'device_id'):
        op.create_index(op.f(f'ix_rejections_{column}'), 'rejections', [column], unique=False)


def downgrade() -> None:
    for column in ('device_id', 'round_id', 'task_id'):
        op.drop_index(op.f(f'ix_rejections_{column}'), table_name='rejections')
    op.drop_table('rejections')
