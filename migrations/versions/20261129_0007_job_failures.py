"""failures of runs, galleries and packs: how many times a job's worker died while it
worked on it (the watchdog gives the job up after max_job_attempts); sent_at: when the
job was last handed to the broker (the watchdog sends the queued rows that never were)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 17:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

TABLES = ('runs', 'galleries', 'packs')


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as b:
            b.add_column(sa.Column('failures', sa.Integer(), nullable=False, server_default='0'))
            b.add_column(sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True))
        op.execute(f"UPDATE {table} SET sent_at = created_at")  # every job before this was sent


def downgrade() -> None:
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as b:
            b.drop_column('sent_at')
            b.drop_column('failures')
