"""escalation alerts outbox

Revision ID: 0004
Revises: 0003
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tracker.db.types

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('alerts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('incident_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('opened_at', tracker.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('acknowledged_at', tracker.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('acknowledged_by', sa.String(length=128), nullable=True),
    sa.Column('resolved_at', tracker.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('next_repeat_at', tracker.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('repeats', sa.Integer(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_alerts_customer_id_customers')),
    sa.ForeignKeyConstraint(['incident_id'], ['alerts.id'], name=op.f('fk_alerts_incident_id_alerts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts'))
    )
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.create_index('ix_alerts_customer', ['customer_id', 'state'], unique=False)
        batch_op.create_index('ix_alerts_provider_kind', ['provider', 'kind', 'opened_at'], unique=False)
        batch_op.create_index('ix_alerts_repeat', ['next_repeat_at'], unique=False, sqlite_where=sa.text('next_repeat_at IS NOT NULL'), postgresql_where=sa.text('next_repeat_at IS NOT NULL'))
        batch_op.create_index('ix_alerts_state', ['state', 'id'], unique=False)
        batch_op.create_index('uq_alerts_key', ['key'], unique=True)

    op.create_table('notifications',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('alert_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('next_attempt_at', tracker.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('lease_until', tracker.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('lease_owner', sa.String(length=64), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', tracker.db.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sent_at', tracker.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['alert_id'], ['alerts.id'], name=op.f('fk_notifications_alert_id_alerts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications'))
    )
    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.create_index('ix_notifications_alert', ['alert_id'], unique=False)
        batch_op.create_index('ix_notifications_due', ['channel', 'next_attempt_at'], unique=False, sqlite_where=sa.text("state = 'pending'"), postgresql_where=sa.text("state = 'pending'"))
        batch_op.create_index('uq_notifications_key_channel', ['key', 'channel'], unique=True)

    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deadline_at', tracker.db.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('deadline_tier', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('deadline_lease_until', tracker.db.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('deadline_lease_owner', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_customers_deadline', ['deadline_at'], unique=False, sqlite_where=sa.text('deadline_at IS NOT NULL'), postgresql_where=sa.text('deadline_at IS NOT NULL'))

    # Customers already pending: due for a look now; the escalation step computes their real next deadline.
    op.execute("UPDATE customers SET deadline_at = pending_since, deadline_tier = 'overdue' WHERE state = 'pending'")


def downgrade() -> None:
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index('ix_customers_deadline', sqlite_where=sa.text('deadline_at IS NOT NULL'), postgresql_where=sa.text('deadline_at IS NOT NULL'))
        batch_op.drop_column('deadline_lease_owner')
        batch_op.drop_column('deadline_lease_until')
        batch_op.drop_column('deadline_tier')
        batch_op.drop_column('deadline_at')

    with op.batch_alter_table('notifications', schema=None) as batch_op:
        batch_op.drop_index('uq_notifications_key_channel')
        batch_op.drop_index('ix_notifications_due', sqlite_where=sa.text("state = 'pending'"), postgresql_where=sa.text("state = 'pending'"))
        batch_op.drop_index('ix_notifications_alert')

    op.drop_table('notifications')
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index('uq_alerts_key')
        batch_op.drop_index('ix_alerts_state')
        batch_op.drop_index('ix_alerts_repeat', sqlite_where=sa.text('next_repeat_at IS NOT NULL'), postgresql_where=sa.text('next_repeat_at IS NOT NULL'))
        batch_op.drop_index('ix_alerts_provider_kind')
        batch_op.drop_index('ix_alerts_customer')

    op.drop_table('alerts')
