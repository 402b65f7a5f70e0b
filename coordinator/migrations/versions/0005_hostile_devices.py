"""Defences against hostile devices: disabled devices, failed rounds, norm clipping, 64-bit sums.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 23:30:00.000000

- ``devices.disabled_at``: an admin can disable a device; its token is refused from then on.
- ``rounds.error``: a round whose aggregation failed is ``failed`` with the reason, instead of
  staying ``aggregating`` and being retried (and blocking the watcher) forever.
- ``jobs.norm_clip_factor`` and ``global_adapters.num_clipped``: updates far longer than the
  round's median are scaled down before aggregation. Existing jobs get no clipping (NULL),
  which is what they ran with.
- ``global_adapters.num_examples`` becomes 64-bit (a sum over a round's updates).
"""

from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('devices', sa.Column('disabled_at', sa.DateTime(), nullable=True))
    op.add_column('rounds', sa.Column('error', sa.Text(), nullable=True))
    op.add_column('jobs', sa.Column('norm_clip_factor', sa.Float(), nullable=True))
    # No foreign key points at global_adapters, so SQLite's batch mode may copy the table.
    with op.batch_alter_table('global_adapters') as batch:
        batch.add_column(sa.Column('num_clipped', sa.Integer(), server_default='0', nullable=False))
        batch.alter_column('num_examples', type_=sa.BigInteger(), existing_type=sa.Integer(),
                           existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('global_adapters') as batch:
        batch.alter_column('num_examples', type_=sa.Integer(), existing_type=sa.BigInteger(),
                           existing_nullable=False)
        batch.drop_column('num_clipped')
    op.drop_column('jobs', 'norm_clip_factor')
    op.drop_column('rounds', 'error')
    op.drop_column('devices', 'disabled_at')
