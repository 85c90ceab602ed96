"""error details of runs, galleries and packs, warning details of runs: msgids and params,
so that the pages can show the reason in the reader's language

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 18:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

TABLES = ('runs', 'galleries', 'packs')


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as b:
            b.add_column(sa.Column('error_detail', sa.JSON(), nullable=True))
    with op.batch_alter_table('runs') as b:
        b.add_column(sa.Column('warning_details', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('runs') as b:
        b.drop_column('warning_details')
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as b:
            b.drop_column('error_detail')
