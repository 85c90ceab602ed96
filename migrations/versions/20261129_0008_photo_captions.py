"""captions of photos (trained after the trigger words), and the prompts a run trained
with, kept on its checkpoint for the report

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 17:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('photos') as b:
        b.add_column(sa.Column('caption', sa.Text(), nullable=True))
    with op.batch_alter_table('checkpoints') as b:
        b.add_column(sa.Column('prompts', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('checkpoints') as b:
        b.drop_column('prompts')
    with op.batch_alter_table('photos') as b:
        b.drop_column('caption')
