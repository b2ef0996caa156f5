"""The change feed's statements: append in the transaction that made the changes, read after an id.

Ids must follow commit order, or a reader that has seen id 11 could later find 10 committed and never read it.
SQLite has one writer at a time, so its ids do. On PostgreSQL ids come from a sequence when the row is
inserted, so every append first takes one transaction-level advisory lock, held until its transaction ends:
appends (only the tail of each transaction that changes something) take turns, and no id is handed out before
the one before it is committed or rolled back. The ``NOTIFY`` sent with the rows is delivered at commit and
only wakes other processes' streams; they read the rows from here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, func, select, text

from tracker.db.tables import changes

CHANNEL = "tracker_changes"
LOCK_KEY = 0x7472_6163_6B32  # "track2": appends to the change feed, one transaction at a time
_COLUMNS = frozenset({"kind", "provider", "customer_id", "at"})


def entries(moves: Sequence[dict[str, Any]] = (), alerts: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """Feed entries of change notices (``transitions.plans``) and of alerts raised, resolved or acknowledged
    (``alerts.logged``)."""
    found = [{"kind": "transition", **move} for move in moves]
    found += [{"kind": "alert", "alert_id": alert["alert_id"], "action": alert["action"],
               "alert_kind": alert["kind"], "provider": alert["provider"], "customer_id": alert["customer_id"],
               "incident_id": alert["incident_id"]} for alert in alerts]
    return found


def append(conn: Connection, entries: Sequence[dict[str, Any]], now: datetime) -> None:
    """Store ``entries`` (each with ``kind``, ``provider`` and ``customer_id``; the rest is the body)."""
    if not entries:
        return
    if conn.dialect.name == "postgresql":  # the lock, and the NOTIFY that goes out when the transaction commits
        conn.execute(text("SELECT pg_advisory_xact_lock(:key), pg_notify(:channel, '')"),
                     {"key": LOCK_KEY, "channel": CHANNEL})
    conn.execute(changes.insert(), [
        {"at": entry.get("at", now), "kind": entry["kind"], "provider": entry["provider"],
         "customer_id": entry.get("customer_id"),
         "body": json.dumps({k: v for k, v in entry.items() if k not in _COLUMNS}, default=str)}
        for entry in entries])


def after(conn: Connection, last_id: int, limit: int) -> list[Row[Any]]:
    """The entries after ``last_id``, oldest first."""
    return list(conn.execute(select(changes).where(changes.c.id > last_id).order_by(changes.c.id).limit(limit)))


def last_id(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(changes.c.id), 0))).scalar_one())


def prune(conn: Connection, before: datetime) -> int:
    """Forget the entries older than ``before``; how many. Along the primary key: entries are appended in time
    order and the old ones are pruned regularly, so the scan for the first one to keep is short."""
    keep = conn.execute(select(changes.c.id).where(changes.c.at >= before).order_by(changes.c.id).limit(1)
                        ).scalar_one_or_none()
    query = changes.delete() if keep is None else changes.delete().where(changes.c.id < keep)
    return int(conn.execute(query).rowcount or 0)
