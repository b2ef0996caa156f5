"""api_keys: one live key per name, and when each key was last used

Revision ID: 0009
Revises: 0008

``tracker keys list`` shows when a key was last verified (``last_used_at``), and ``tracker keys revoke NAME``
needs a name to mean one live key. Live keys that already share a name keep the oldest's name; each later one is
renamed ``<name>#<id>`` (still recognisable, and listed), so the unique index can be built on any database.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import tracker.db.types

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('last_used_at', tracker.db.types.UTCDateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE api_keys SET name = name || '#' || CAST(id AS VARCHAR(20)) WHERE revoked_at IS NULL AND EXISTS "
        "(SELECT 1 FROM api_keys AS older WHERE older.name = api_keys.name AND older.revoked_at IS NULL "
        "AND older.id < api_keys.id)")
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.create_index('uq_api_keys_live_name', ['name'], unique=True,
                              sqlite_where=sa.text('revoked_at IS NULL'), postgresql_where=sa.text('revoked_at IS NULL'))


def downgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index('uq_api_keys_live_name', sqlite_where=sa.text('revoked_at IS NULL'),
                            postgresql_where=sa.text('revoked_at IS NULL'))
        batch_op.drop_column('last_used_at')
