"""changes: the change feed behind GET /v1/stream

Revision ID: 0011
Revises: 0010

One row per transition and alert change, appended in the transaction that made the change. Ids follow commit
order and are never reused, so a stream resumed with Last-Event-ID misses nothing.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tracker.db.types

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'changes',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
        sa.Column('at', tracker.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('provider', sa.String(length=32), nullable=False),
        sa.Column('customer_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
        sa.Column('body', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table('changes')
