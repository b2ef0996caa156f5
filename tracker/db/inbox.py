"""The inbox's statements: store deliveries (the webhook path's one INSERT), claim them for the applier, record
each one's outcome.

Storing is the acknowledgement's only database work, so it is one multi-row ``INSERT ... ON CONFLICT DO
NOTHING RETURNING`` on the driver's cursor, its text cached per row count: the unique indexes on
(provider, event_id) and (provider, fingerprint) decide what is a duplicate, also between processes, and the
rows they refuse are the duplicates. Column lists come from the table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, bindparam, func, or_, select, update

from tracker.db.tables import inbound_events
from tracker.db.types import UTCDateTime, sqlite_text

COLUMNS = tuple(c.name for c in inbound_events.columns if c.name != "id")
_TIMES = frozenset(c.name for c in inbound_events.columns if isinstance(c.type, UTCDateTime))
RECEIVED = "received"  # stored, not applied yet
CHANNEL = "tracker_inbox"  # PostgreSQL: NOTIFY after each stored batch wakes the appliers of every process
_CHUNK = 64  # rows a statement: few distinct texts, far from any bound-parameter limit
_texts: dict[tuple[str, int], str] = {}


def _insert_text(dialect: str, rows: int, returning: str) -> str:
    key = (dialect + returning, rows)
    text = _texts.get(key)
    if text is None:
        mark = "%s" if dialect == "postgresql" else "?"
        group = "(" + ", ".join([mark] * len(COLUMNS)) + ")"
        text = _texts[key] = (f"INSERT INTO inbound_events ({', '.join(COLUMNS)}) "  # noqa: S608
                              f"VALUES {', '.join([group] * rows)} ON CONFLICT DO NOTHING RETURNING {returning}")
    return text


def _bind(conn: Connection, row: Mapping[str, Any]) -> list[Any]:
    if conn.dialect.name == "postgresql":
        return [row.get(name) for name in COLUMNS]
    return [sqlite_text(row.get(name)) if name in _TIMES else row.get(name) for name in COLUMNS]


def store(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int | None]:
    """Insert inbox rows (``COLUMNS`` by name; each with a distinct fingerprint, or none for a rejected
    delivery); the id of each, or None where a stored row has its event id or fingerprint already."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        by_print: dict[str, int] = {}
        keyed = [row for row in rows if row["fingerprint"] is not None]
        for start in range(0, len(keyed), _CHUNK):
            chunk = keyed[start:start + _CHUNK]
            cursor.execute(_insert_text(conn.dialect.name, len(chunk), "id, fingerprint"),
                           [value for row in chunk for value in _bind(conn, row)])
            by_print.update({fingerprint: int(row_id) for row_id, fingerprint in cursor.fetchall()})
        ids: list[int | None] = []
        for row in rows:
            if row["fingerprint"] is not None:
                ids.append(by_print.get(row["fingerprint"]))
                continue
            cursor.execute(_insert_text(conn.dialect.name, 1, "id"), _bind(conn, row))  # rejected: rare
            ids.append(int(cursor.fetchone()[0]))  # type: ignore[index]
        return ids
    finally:
        cursor.close()


def notify(conn: Connection) -> None:
    """PostgreSQL: wake every process's applier when this transaction commits."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"NOTIFY {CHANNEL}")


def originals(conn: Connection, provider: str, event_ids: Sequence[str], fingerprints: Sequence[str]
              ) -> list[Row[Any]]:
    """The stored first deliveries with these event ids or fingerprints (what a duplicate is a copy of)."""
    table = inbound_events
    return list(conn.execute(
        select(table.c.id, table.c.event_id, table.c.fingerprint)
        .where(table.c.provider == provider, table.c.duplicate_of.is_(None),
               or_(table.c.event_id.in_(list(event_ids)), table.c.fingerprint.in_(list(fingerprints))))
    ))


_CLAIMED = (inbound_events.c.id, inbound_events.c.provider, inbound_events.c.body, inbound_events.c.event_id,
            inbound_events.c.fingerprint, inbound_events.c.outcome, inbound_events.c.attempts,
            inbound_events.c.received_at, inbound_events.c.duplicate_of)


def claim(conn: Connection, limit: int, now: datetime) -> list[Row[Any]]:
    """The oldest rows not applied yet (errors only once their retry is due), in arrival order. On PostgreSQL
    they stay locked until the transaction ends; rows another transaction holds (a replay) are skipped."""
    table = inbound_events
    query = (select(*_CLAIMED)
             .where(table.c.processed_at.is_(None), or_(table.c.retry_at.is_(None), table.c.retry_at <= now))
             .order_by(table.c.id).limit(limit))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return list(conn.execute(query))


def lock(conn: Connection, event_id: int) -> Row[Any] | None:
    """One stored event, for a replay (locked on PostgreSQL)."""
    query = select(*_CLAIMED).where(inbound_events.c.id == event_id)
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).first()  # type: ignore[return-value]


_mark = (update(inbound_events).where(inbound_events.c.id == bindparam("_id"))
         .values(outcome=bindparam("outcome"), reason=bindparam("reason"), customer_id=bindparam("customer_id"),
                 processed_at=bindparam("processed_at"), attempts=bindparam("attempts"),
                 retry_at=bindparam("retry_at")))


def mark(conn: Connection, outcomes: Sequence[Mapping[str, Any]]) -> None:
    """Record each applied row's outcome (``_id``, ``outcome``, ``reason``, ``customer_id``, ``processed_at``,
    ``attempts``, ``retry_at``)."""
    if outcomes:
        conn.execute(_mark, list(outcomes))


def backlog(conn: Connection) -> tuple[int, datetime | None]:
    """How many stored rows wait to be applied, and since when the oldest has waited."""
    table = inbound_events
    count, oldest = conn.execute(select(func.count(), func.min(table.c.received_at))
                                 .where(table.c.processed_at.is_(None))).one()
    return int(count), oldest

