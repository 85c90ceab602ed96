"""loss history and stage times of runs, copy guard on images, gallery diversity, pack options

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 14:40:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs') as b:
        b.add_column(sa.Column('loss_history', sa.JSON(), nullable=False, server_default='[]'))
        b.add_column(sa.Column('stage_times', sa.JSON(), nullable=False, server_default='{}'))
    with op.batch_alter_table('galleries') as b:
        b.add_column(sa.Column('feature_network', sa.String(length=200), nullable=True))
        b.add_column(sa.Column('near_copy_threshold', sa.Float(), nullable=True))
        b.add_column(sa.Column('diversity', sa.JSON(), nullable=True))
    with op.batch_alter_table('images') as b:
        b.add_column(sa.Column('nearest_distance', sa.Float(), nullable=True))
        b.add_column(sa.Column('nearest_photo_id', sa.Uuid(), nullable=True))
        b.add_column(sa.Column('near_copy', sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table('packs') as b:
        b.alter_column('size', existing_type=sa.String(length=20), type_=sa.String(length=100))
        b.add_column(sa.Column('exclude_near_copies', sa.Boolean(), nullable=False, server_default=sa.false()))
        b.add_column(sa.Column('estimated_bytes', sa.BigInteger(), nullable=True))
        b.add_column(sa.Column('progress', sa.Float(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('packs') as b:
        b.drop_column('progress')
        b.drop_column('estimated_bytes')
        b.drop_column('exclude_near_copies')
        b.alter_column('size', existing_type=sa.String(length=100), type_=sa.String(length=20))
    with op.batch_alter_table('images') as b:
        b.drop_column('near_copy')
        b.drop_column('nearest_photo_id')
        b.drop_column('nearest_distance')
    with op.batch_alter_table('galleries') as b:
        b.drop_column('diversity')
        b.drop_column('near_copy_threshold')
        b.drop_column('feature_network')
    with op.batch_alter_table('runs') as b:
        b.drop_column('stage_times')
        b.drop_column('loss_history')
