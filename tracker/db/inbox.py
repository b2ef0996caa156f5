"""The inbox's statements: store deliveries (the webhook path's one INSERT), claim them for the applier, record
each one's outcome.

Storing is the acknowledgement's only database work, so it is one multi-row ``INSERT ... ON CONFLICT DO
NOTHING RETURNING`` on the driver's own connection in autocommit mode (one statement: one round trip, atomic),
its text cached per row count: the unique indexes on (provider, event_id) and (provider, fingerprint) decide
what is a duplicate, also between processes, and the rows they refuse are the duplicates. Column lists come
from the table.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, or_, select

from tracker.db.statements import equal_to, update_by_key
from tracker.db.tables import inbound_events
from tracker.db.types import driver_values, time_columns

COLUMNS = tuple(c.name for c in inbound_events.columns if c.name != "id")
_TIMES = time_columns(inbound_events)
RECEIVED = "received"  # stored, not applied yet
CHANNEL = "tracker_inbox"  # PostgreSQL: NOTIFY with a stored batch wakes the appliers of other processes
CHUNK = 256  # rows a statement: a whole batch of the inbox writer, far from any bound-parameter limit
# SQLite: the inbox writer's commits copy the WAL back into the database only past this many pages (about 40 MB),
# a backstop: the applier does it between its batches (``tracker.inbox.applier``), off the webhooks' path.
BACKSTOP_PAGES = 10_000
_texts: dict[tuple[str, int, bool], str] = {}


def _insert_text(dialect: str, rows: int, wake: bool) -> str:
    key = (dialect, rows, wake)
    text = _texts.get(key)
    if text is None:
        mark = "%s" if dialect == "postgresql" else "?"
        group = "(" + ", ".join([mark] * len(COLUMNS)) + ")"
        text = (f"INSERT INTO inbound_events ({', '.join(COLUMNS)}) "  # noqa: S608
                f"VALUES {', '.join([group] * rows)} ON CONFLICT DO NOTHING RETURNING id, fingerprint")
        if wake:  # the same statement: no round trip of its own
            text = (f"WITH stored AS ({text}) SELECT stored.id, stored.fingerprint FROM stored, "  # noqa: S608
                    f"(SELECT pg_notify('{CHANNEL}', '')) AS woken")
        _texts[key] = text
    return text


def _bind(dialect: str, row: Mapping[str, Any]) -> list[Any]:
    return driver_values(dialect, _TIMES, COLUMNS, row)


def store(dbapi_connection: Any, dialect: str, rows: Sequence[Mapping[str, Any]], *, wake: bool = False
          ) -> list[int | None]:
    """Insert inbox rows (``COLUMNS`` by name; each with a distinct fingerprint, or none for a rejected
    delivery) on a driver connection in autocommit mode: one statement, so one round trip and atomic by
    itself. The id of each row, or None where a stored row has its event id or fingerprint already. ``wake``
    (PostgreSQL): notify the other processes' appliers in the same statement."""
    cursor = dbapi_connection.cursor()
    try:
        ids: list[int | None] = []
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start:start + CHUNK]
            cursor.execute(_insert_text(dialect, len(chunk), wake and dialect == "postgresql"),
                           [value for row in chunk for value in _bind(dialect, row)])
            found = cursor.fetchall()
            by_print = {fingerprint: int(row_id) for row_id, fingerprint in found if fingerprint is not None}
            unkeyed = iter(sorted(int(row_id) for row_id, fingerprint in found if fingerprint is None))
            # A row without a fingerprint (a rejected delivery) is never a duplicate: it is stored, and such rows
            # come back in insertion order (their ids ascend; no other process can take ids from this statement
            # in between, as the ids are handed out in the statement's row order).
            ids += [by_print.get(row["fingerprint"]) if row["fingerprint"] is not None else next(unkeyed)
                    for row in chunk]
        return ids
    finally:
        cursor.close()


class Connections:
    """A driver connection in autocommit mode for ``store``, kept by the thread that stores (no pool checkout,
    no ping, no BEGIN or COMMIT of its own: each store is one statement), dropped after a failure."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._raw: Any = None

    def get(self) -> Any:
        if self._raw is None:
            raw = self.engine.raw_connection()
            if self.dialect == "postgresql":
                raw.driver_connection.autocommit = True  # type: ignore[union-attr]
            else:  # SQLite's connections are in the driver's autocommit mode already (tracker.db.engine)
                raw.driver_connection.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")  # type: ignore[union-attr]
            self._raw = raw
        return self._raw.driver_connection

    def drop(self, broken: bool) -> None:
        raw, self._raw = self._raw, None
        if raw is None:
            return
        with contextlib.suppress(Exception):
            if broken:
                raw.invalidate()
                return
            if self.dialect == "postgresql":  # back to the pool as the pool hands it out
                raw.driver_connection.autocommit = False
            else:
                raw.driver_connection.execute("PRAGMA wal_autocheckpoint=1000")
            raw.close()


def originals(dbapi_connection: Any, dialect: str, provider: str, event_ids: Sequence[str],
              fingerprints: Sequence[str]) -> list[tuple[int, str | None, str | None]]:
    """The stored first deliveries with these event ids or fingerprints (what a duplicate is a copy of):
    (id, event_id, fingerprint)."""
    if dialect == "postgresql":
        query = ("SELECT id, event_id, fingerprint FROM inbound_events WHERE provider = %s AND duplicate_of IS NULL "
                 "AND (event_id = ANY(%s) OR fingerprint = ANY(%s))")
        params: list[Any] = [provider, list(event_ids), list(fingerprints)]
    else:
        query = ("SELECT id, event_id, fingerprint FROM inbound_events WHERE provider = ? AND duplicate_of IS NULL "
                 "AND (event_id IN (SELECT value FROM json_each(?)) "
                 "OR fingerprint IN (SELECT value FROM json_each(?)))")
        params = [provider, json.dumps(list(event_ids)), json.dumps(list(fingerprints))]
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(query, params)
        return [(int(row_id), event_id, fingerprint) for row_id, event_id, fingerprint in cursor.fetchall()]
    finally:
        cursor.close()


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


_MARKED = ("outcome", "reason", "customer_id", "processed_at", "attempts", "retry_at")


def mark(conn: Connection, outcomes: Sequence[Mapping[str, Any]]) -> None:
    """Record each applied row's outcome (``_id``, and the ``_MARKED`` columns by name), in one statement."""
    update_by_key(conn, inbound_events, _MARKED, ("id",), outcomes)


_LISTED = tuple(c for c in inbound_events.c if c.name not in ("body", "headers", "fingerprint", "retry_at"))


def page(conn: Connection, *, provider: str | None, outcome: str | None, customer_id: int | None,
         before: int | None, limit: int) -> list[Row[Any]]:
    """Stored events, newest first, without their bodies or headers (what an operator lists)."""
    query = equal_to(select(*_LISTED), inbound_events, provider=provider, outcome=outcome, customer_id=customer_id)
    query = query.order_by(inbound_events.c.id.desc()).limit(limit)
    if before is not None:
        query = query.where(inbound_events.c.id < before)
    return list(conn.execute(query))
