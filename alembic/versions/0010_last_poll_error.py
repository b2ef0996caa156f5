"""customers: why the last poll failed

Revision ID: 0010
Revises: 0009

The customer record shows the last poll's failure (``last_poll_error``, its kind and message) until a poll
succeeds again; the provider's own last error stays in ``provider_state``.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_poll_error', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_column('last_poll_error')
