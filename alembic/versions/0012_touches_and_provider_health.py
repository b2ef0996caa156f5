"""customers.touches; provider health: last success, last error's time, last webhook; failed notifications

Revision ID: 0012
Revises: 0011

``customers.touches`` counts the writes to a customer's row: its ETag follows it, since a poll or a webhook that
moves nothing still changes what the record shows (its last poll, when the provider was last heard from).
``provider_state`` gains what the dashboard's provider health shows: the last poll answered, when the last error
happened, the last webhook applied. A partial index finds the failed notifications without scanning the rest.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tracker.db.types

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('touches', sa.Integer(), server_default='0', nullable=False))
    with op.batch_alter_table('provider_state', schema=None) as batch_op:
        for name in ('last_error_at', 'last_success_at', 'last_webhook_at'):
            batch_op.add_column(sa.Column(name, tracker.db.types.UTCDateTime(timezone=True), nullable=True))
    op.create_index('ix_notifications_failed', 'notifications', ['id'], unique=False,
                    sqlite_where=sa.text("state = 'failed'"), postgresql_where=sa.text("state = 'failed'"))


def downgrade() -> None:
    op.drop_index('ix_notifications_failed', table_name='notifications',
                  sqlite_where=sa.text("state = 'failed'"), postgresql_where=sa.text("state = 'failed'"))
    with op.batch_alter_table('provider_state', schema=None) as batch_op:
        for name in ('last_webhook_at', 'last_success_at', 'last_error_at'):
            batch_op.drop_column(name)
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_column('touches')
