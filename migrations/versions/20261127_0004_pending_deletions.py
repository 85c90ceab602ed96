"""objects whose deletion waits for the object store

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 12:50:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('pending_deletions',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('key', sa.String(length=500), nullable=False),
    sa.Column('prefix', sa.Boolean(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pending_deletions'))
    )


def downgrade() -> None:
    op.drop_table('pending_deletions')
