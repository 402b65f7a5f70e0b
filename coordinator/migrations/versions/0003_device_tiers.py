"""Per-device tiers: a job's configurator and each task's own artifact and start adapter.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 10:00:00.000000

Additive only: existing jobs get the "uniform" configurator (every device the job's tier,
as before) and on-demand tier preparation; existing tasks keep NULL tier columns, which
means the job's artifact and global adapter as they are.
"""

from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_TASK_COLUMNS = ('artifact_id', 'arm', 'tier', 'local_steps', 'start_weights_sha256', 'start_ptd_sha256',
                 'start_ptd_size')


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('configurator', sa.String(length=100), server_default='uniform', nullable=False))
        batch.add_column(sa.Column('configurator_options', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('prepare_tiers', sa.String(length=20), server_default='on_demand',
                                   nullable=False))
    # Plain ADD COLUMNs (no batch copy: SQLite refuses to replace a table other rows reference),
    # so tasks.artifact_id is a plain integer, without a foreign-key constraint, on both backends.
    op.add_column('tasks', sa.Column('artifact_id', sa.Integer(), nullable=True))
    op.add_column('tasks', sa.Column('arm', sa.String(length=100), nullable=True))
    op.add_column('tasks', sa.Column('tier', sa.JSON(), nullable=True))
    op.add_column('tasks', sa.Column('local_steps', sa.Integer(), nullable=True))
    op.add_column('tasks', sa.Column('start_weights_sha256', sa.String(length=64), nullable=True))
    op.add_column('tasks', sa.Column('start_ptd_sha256', sa.String(length=64), nullable=True))
    op.add_column('tasks', sa.Column('start_ptd_size', sa.BigInteger(), nullable=True))
    # devices may fetch a blob that is some task's start adapter: looked up on every download
    op.create_index(op.f('ix_tasks_start_ptd_sha256'), 'tasks', ['start_ptd_sha256'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_tasks_start_ptd_sha256'), table_name='tasks')
    for column in reversed(_TASK_COLUMNS):
        op.drop_column('tasks', column)
    for column in ('prepare_tiers', 'configurator_options', 'configurator'):
        op.drop_column('jobs', column)
