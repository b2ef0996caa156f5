"""polling state

Revision ID: 0002
Revises: 0001
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tracker.db.types

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('provider_state',
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('breaker_state', sa.String(length=16), server_default='closed', nullable=False),
    sa.Column('breaker_failures', sa.Integer(), server_default='0', nullable=False),
    sa.Column('breaker_open_until', tracker.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('breaker_opens', sa.Integer(), server_default='0', nullable=False),
    sa.Column('blocked_until', tracker.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('next_slot_at', tracker.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('updated_at', tracker.db.types.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('provider', name=op.f('pk_provider_state'))
    )
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('next_poll_at', tracker.db.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('poll_lease_until', tracker.db.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('poll_lease_owner', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('poll_failures', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('last_polled_at', tracker.db.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('last_signal_at', tracker.db.types.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_customers_due_poll', ['provider', 'next_poll_at'], unique=False)

    # Customers tracked before polling existed: poll the ones a poll can help soon, then the policy takes over.
    op.execute(
        "UPDATE customers SET next_poll_at = CURRENT_TIMESTAMP WHERE state <> 'verified' AND "
        "(provider <> 'blaaiz' OR (state = 'pending' AND customer_type <> 'business'))"
    )


def downgrade() -> None:
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index('ix_customers_due_poll')
        batch_op.drop_column('last_signal_at')
        batch_op.drop_column('last_polled_at')
        batch_op.drop_column('poll_failures')
        batch_op.drop_column('poll_lease_owner')
        batch_op.drop_column('poll_lease_until')
        batch_op.drop_column('next_poll_at')

    op.drop_table('provider_state')
