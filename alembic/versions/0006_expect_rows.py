"""tracker_expect_rows: a PostgreSQL function that refuses a batch whose customers moved under it

Revision ID: 0006
Revises: 0005

The webhook writer (tracker.ingest) sends a batch's writes and its COMMIT to PostgreSQL in one round trip.
Its UPDATE of the customers matches each row on the version the batch read; that every row matched used to be
checked by the writer after the writes' answers, before it sent COMMIT. With COMMIT in the same round trip the
server checks it: ``SELECT tracker_expect_rows(count(*), n) FROM (UPDATE ... RETURNING 1)`` raises a
serialization failure (SQLSTATE 40001) when fewer than ``n`` rows matched, which aborts the transaction before
its COMMIT runs; the writer runs the batch again, as after any serialization failure. SQLite has no such
functions and needs none: its writer checks the count before COMMIT, as before.
"""
from __future__ import annotations

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute("""
        CREATE OR REPLACE FUNCTION tracker_expect_rows(matched bigint, expected bigint) RETURNS bigint
        LANGUAGE plpgsql AS $$
        BEGIN
            IF matched IS DISTINCT FROM expected THEN
                RAISE EXCEPTION 'expected to update % customer rows at the versions read, matched %',
                    expected, matched USING ERRCODE = 'serialization_failure';
            END IF;
            RETURN matched;
        END
        $$
    """)


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute("DROP FUNCTION IF EXISTS tracker_expect_rows(bigint, bigint)")
