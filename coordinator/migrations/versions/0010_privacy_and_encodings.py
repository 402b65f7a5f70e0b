"""Client-level differential privacy and update encodings: a job's privacy settings and update
encoding, each global adapter's epsilon, each update's bytes on the wire.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 01:00:00.000000

Additive only: every column is nullable; jobs that existed before have no privacy settings
(their adapters no epsilon) and the fp32 encoding (None), as a job created without them still
has; their updates' wire size was their stored size (None here).
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
    op.add_column('jobs', sa.Column('update_encoding', sa.JSON(none_as_null=True), nullable=True))
    op.add_column('updates', sa.Column('wire_bytes', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column('updates', 'wire_bytes')
    op.drop_column('jobs', 'update_encoding')
    op.drop_column('global_adapters', 'epsilon')
    op.drop_column('jobs', 'privacy')
