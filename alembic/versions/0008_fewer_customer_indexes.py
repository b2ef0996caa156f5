"""customers: only the indexes the queries use, and room on each page for updates in place

Revision ID: 0008
Revises: 0007

Five of the customers' indexes ended with updated_at, which every stored change moves, so every change wrote
five more index entries (and left as many dead ones for vacuum). The list's state and tier filters now use the
newest-first index, or the partial index of pending customers (the escalated tiers are all pending). On
PostgreSQL the table keeps 15 % of each page free, so an update that changes no indexed column (a poll's lease,
the provider's latest time) stays on its page as a HOT update, and autovacuum visits the two tables that change
most (customers, the inbox) at 5 % of dead rows instead of 20 %.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index('ix_customers_state_updated')
        batch_op.drop_index('ix_customers_provider_state_updated')
        batch_op.drop_index('ix_customers_tier_updated', sqlite_where=sa.text("tier <> 'none'"), postgresql_where=sa.text("tier <> 'none'"))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("ALTER TABLE customers SET (fillfactor = 85, autovacuum_vacuum_scale_factor = 0.05)")
        op.execute("ALTER TABLE inbound_events SET (autovacuum_vacuum_scale_factor = 0.05)")


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("ALTER TABLE inbound_events RESET (autovacuum_vacuum_scale_factor)")
        op.execute("ALTER TABLE customers RESET (fillfactor, autovacuum_vacuum_scale_factor)")
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.create_index('ix_customers_tier_updated', ['tier', 'updated_at', 'id', 'state'], unique=False, sqlite_where=sa.text("tier <> 'none'"), postgresql_where=sa.text("tier <> 'none'"))
        batch_op.create_index('ix_customers_provider_state_updated', ['provider', 'state', 'updated_at', 'id'], unique=False)
        batch_op.create_index('ix_customers_state_updated', ['state', 'updated_at', 'id'], unique=False)
