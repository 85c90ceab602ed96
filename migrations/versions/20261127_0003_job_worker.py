"""which worker process holds a job

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 12:45:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

JOBS = ('runs', 'galleries', 'packs')


def upgrade() -> None:
    for table in JOBS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('worker', sa.String(length=200), nullable=True))


def downgrade() -> None:
    for table in JOBS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('worker')
