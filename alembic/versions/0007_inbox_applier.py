"""the inbox is applied after it is stored: the applier's queue and retries

Revision ID: 0007
Revises: 0006

Webhooks are acknowledged once stored; the applier applies stored rows later. ``processed_at IS NULL`` marks
the rows it has still to apply (a small partial index, its queue); ``attempts`` and ``retry_at`` let an event
whose processing failed be tried again later without holding back the others. Rows stored before this
revision were applied when stored, except errors, which the applier now tries again. tracker_expect_rows (0006) served the old combined write; it goes.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tracker.db.types

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('inbound_events') as batch:
        batch.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('retry_at', tracker.db.types.UTCDateTime(timezone=True), nullable=True))
    op.create_index('ix_inbound_events_unapplied', 'inbound_events', ['id'], unique=False, sqlite_where=sa.text('processed_at IS NULL'), postgresql_where=sa.text('processed_at IS NULL'))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("DROP FUNCTION IF EXISTS tracker_expect_rows(bigint, bigint)")


def downgrade() -> None:
    op.drop_index('ix_inbound_events_unapplied', table_name='inbound_events', sqlite_where=sa.text('processed_at IS NULL'), postgresql_where=sa.text('processed_at IS NULL'))
    with op.batch_alter_table('inbound_events') as batch:
        batch.drop_column('retry_at')
        batch.drop_column('attempts')
