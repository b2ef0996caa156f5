"""partial indexes for the customer list (pending customers, escalated tiers), statistics on (state, tier)

Revision ID: 0003
Revises: 0002
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

# PostgreSQL assumes columns independent; tier is not 'none' only while pending, so without these it takes
# "state=pending&tier=critical" for a handful of rows and sorts thousands. Not in the models (SQLAlchemy has no
# construct for it), so the migrations-match-models test does not see it.
STATISTICS = "customers_state_tier"


def upgrade() -> None:
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.create_index('ix_customers_pending_updated', ['updated_at', 'id', 'pending_since'], unique=False, sqlite_where=sa.text("state = 'pending'"), postgresql_where=sa.text("state = 'pending'"))
        batch_op.create_index('ix_customers_tier_updated', ['tier', 'updated_at', 'id', 'state'], unique=False, sqlite_where=sa.text("tier <> 'none'"), postgresql_where=sa.text("tier <> 'none'"))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(f'CREATE STATISTICS IF NOT EXISTS {STATISTICS} (mcv) ON state, tier FROM customers')


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(f'DROP STATISTICS IF EXISTS {STATISTICS}')
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index('ix_customers_tier_updated', sqlite_where=sa.text("tier <> 'none'"), postgresql_where=sa.text("tier <> 'none'"))
        batch_op.drop_index('ix_customers_pending_updated', sqlite_where=sa.text("state = 'pending'"), postgresql_where=sa.text("state = 'pending'"))
