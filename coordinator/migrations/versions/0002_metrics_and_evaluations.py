"""Device metrics on updates, evaluations of global adapters, and jobs' eval_examples.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 10:30:00.000000

Additive only: existing updates get ``metrics`` NULL, existing jobs ``eval_examples`` 100
(the server default), and ``evaluations`` starts empty (the evaluation worker fills it in
for closed rounds of running and completed jobs when the coordinator starts).
"""

from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch_alter_table: on SQLite an added column is a plain ALTER TABLE ... ADD COLUMN (no copy).
    with op.batch_alter_table('updates') as batch:
        batch.add_column(sa.Column('metrics', sa.JSON(), nullable=True))
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('eval_examples', sa.Integer(), server_default='100', nullable=False))
    op.create_table('evaluations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('metric', sa.String(length=50), nullable=True),
    sa.Column('value', sa.Float(), nullable=True),
    sa.Column('loss', sa.Float(), nullable=True),
    sa.Column('num_examples', sa.Integer(), nullable=True),
    sa.Column('seconds', sa.Float(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_evaluations_job_id_jobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evaluations')),
    sa.UniqueConstraint('job_id', 'round', name=op.f('uq_evaluations_job_id_round'))
    )
    op.create_index(op.f('ix_evaluations_job_id'), 'evaluations', ['job_id'], unique=False)


def downgrade() -> None:
    op.drop_table('evaluations')
    # A plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): batch mode would copy the table and
    # drop the old one, which SQLite refuses while other tables' rows reference it.
    op.drop_column('jobs', 'eval_examples')
    op.drop_column('updates', 'metrics')
