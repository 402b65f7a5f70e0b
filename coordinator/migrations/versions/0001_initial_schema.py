"""Initial schema: devices, artifacts, jobs, rounds, global adapters, tasks, updates.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 07:42:48.160258
"""

from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('artifacts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=500), nullable=False),
    sa.Column('format', sa.String(length=50), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('manifest_size', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_artifacts')),
    sa.UniqueConstraint('key', name=op.f('uq_artifacts_key'))
    )
    op.create_table('devices',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('platform', sa.String(length=100), nullable=False),
    sa.Column('token_sha256', sa.String(length=64), nullable=False),
    sa.Column('capabilities', sa.JSON(), nullable=False),
    sa.Column('battery', sa.Float(), nullable=True),
    sa.Column('charging', sa.Boolean(), nullable=True),
    sa.Column('registered_at', sa.DateTime(), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_devices')),
    sa.UniqueConstraint('token_sha256', name=op.f('uq_devices_token_sha256'))
    )
    op.create_table('artifact_files',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('artifact_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=500), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('device', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['artifact_id'], ['artifacts.id'], name=op.f('fk_artifact_files_artifact_id_artifacts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_artifact_files')),
    sa.UniqueConstraint('artifact_id', 'path', name=op.f('uq_artifact_files_artifact_id_path'))
    )
    op.create_index(op.f('ix_artifact_files_artifact_id'), 'artifact_files', ['artifact_id'], unique=False)
    op.create_index(op.f('ix_artifact_files_sha256'), 'artifact_files', ['sha256'], unique=False)
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('model', sa.String(length=500), nullable=False),
    sa.Column('task', sa.String(length=200), nullable=False),
    sa.Column('tier', sa.JSON(), nullable=False),
    sa.Column('rounds', sa.Integer(), nullable=False),
    sa.Column('devices_per_round', sa.Integer(), nullable=False),
    sa.Column('min_updates', sa.Integer(), nullable=False),
    sa.Column('round_deadline_s', sa.Float(), nullable=False),
    sa.Column('local_steps', sa.Integer(), nullable=False),
    sa.Column('lr', sa.Float(), nullable=False),
    sa.Column('strategy', sa.String(length=100), nullable=False),
    sa.Column('max_update_norm', sa.Float(), nullable=False),
    sa.Column('min_ram_mb', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('artifact_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['artifact_id'], ['artifacts.id'], name=op.f('fk_jobs_artifact_id_artifacts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    op.create_index(op.f('ix_jobs_status'), 'jobs', ['status'], unique=False)
    op.create_table('global_adapters',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('config_sha256', sa.String(length=64), nullable=False),
    sa.Column('weights_sha256', sa.String(length=64), nullable=False),
    sa.Column('weights_size', sa.BigInteger(), nullable=False),
    sa.Column('ptd_sha256', sa.String(length=64), nullable=False),
    sa.Column('ptd_size', sa.BigInteger(), nullable=False),
    sa.Column('num_updates', sa.Integer(), nullable=False),
    sa.Column('num_examples', sa.Integer(), nullable=False),
    sa.Column('strategy', sa.String(length=100), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_global_adapters_job_id_jobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_global_adapters')),
    sa.UniqueConstraint('job_id', 'round', name=op.f('uq_global_adapters_job_id_round'))
    )
    op.create_index(op.f('ix_global_adapters_job_id'), 'global_adapters', ['job_id'], unique=False)
    op.create_index(op.f('ix_global_adapters_ptd_sha256'), 'global_adapters', ['ptd_sha256'], unique=False)
    op.create_index(op.f('ix_global_adapters_weights_sha256'), 'global_adapters', ['weights_sha256'], unique=False)
    op.create_table('rounds',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('opened_at', sa.DateTime(), nullable=False),
    sa.Column('deadline_at', sa.DateTime(), nullable=False),
    sa.Column('frozen_at', sa.DateTime(), nullable=True),
    sa.Column('closed_at', sa.DateTime(), nullable=True),
    sa.Column('close_reason', sa.String(length=20), nullable=True),
    sa.Column('num_updates', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_rounds_job_id_jobs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rounds')),
    sa.UniqueConstraint('job_id', 'number', name=op.f('uq_rounds_job_id_number'))
    )
    op.create_index(op.f('ix_rounds_job_id'), 'rounds', ['job_id'], unique=False)
    op.create_index(op.f('ix_rounds_status'), 'rounds', ['status'], unique=False)
    op.create_table('tasks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('round_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('assigned_at', sa.DateTime(), nullable=False),
    sa.Column('submitted_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], name=op.f('fk_tasks_device_id_devices')),
    sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], name=op.f('fk_tasks_round_id_rounds')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tasks')),
    sa.UniqueConstraint('round_id', 'device_id', name=op.f('uq_tasks_round_id_device_id'))
    )
    op.create_index(op.f('ix_tasks_device_id'), 'tasks', ['device_id'], unique=False)
    op.create_index(op.f('ix_tasks_round_id'), 'tasks', ['round_id'], unique=False)
    op.create_table('updates',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('round_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('num_examples', sa.Integer(), nullable=False),
    sa.Column('loss_before', sa.Float(), nullable=False),
    sa.Column('loss_after', sa.Float(), nullable=False),
    sa.Column('train_seconds', sa.Float(), nullable=False),
    sa.Column('bytes_downloaded', sa.BigInteger(), nullable=False),
    sa.Column('bytes_uploaded', sa.BigInteger(), nullable=False),
    sa.Column('delta_norm', sa.Float(), nullable=False),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], name=op.f('fk_updates_device_id_devices')),
    sa.ForeignKeyConstraint(['round_id'], ['rounds.id'], name=op.f('fk_updates_round_id_rounds')),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_updates_task_id_tasks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_updates')),
    sa.UniqueConstraint('task_id', name=op.f('uq_updates_task_id'))
    )
    op.create_index(op.f('ix_updates_device_id'), 'updates', ['device_id'], unique=False)
    op.create_index(op.f('ix_updates_round_id'), 'updates', ['round_id'], unique=False)
    op.create_index(op.f('ix_updates_sha256'), 'updates', ['sha256'], unique=False)


def downgrade() -> None:
    for table in ("updates", "tasks", "rounds", "global_adapters", "jobs", "artifact_files", "devices", "artifacts"):
        op.drop_table(table)
