"""job heartbeats and attempts, cancel of galleries and packs, session epochs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 12:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

JOBS = ('runs', 'galleries', 'packs')


def upgrade() -> None:
    for table in JOBS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
            batch_op.add_column(sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'))
            if table != 'runs':
                batch_op.add_column(sa.Column('cancel_requested', sa.Boolean(), nullable=False,
                                              server_default=sa.false()))
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_epoch', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('session_epoch')
    for table in JOBS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            if table != 'runs':
                batch_op.drop_column('cancel_requested')
            batch_op.drop_column('attempts')
            batch_op.drop_column('heartbeat_at')
