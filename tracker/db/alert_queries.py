"""Named queries of alerts and their outbox (notifications). Each takes an open connection inside the caller's
transaction; none commits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, func, select, update

from tracker.db.statements import built_once, claim_leased, dialect_insert, equal_to, unleased
from tracker.db.tables import alerts, notifications


def insert_alert(conn: Connection, values: Mapping[str, Any]) -> int | None:
    """Insert an alert unless its key exists (each key alerts at most once); its id, or None."""
    return insert_alerts(conn, [values]).get(values["key"])


def insert_alerts(conn: Connection, values: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Insert alerts whose keys do not exist yet (each key alerts at most once), in one statement; the new
    ones' ids by key."""
    if not values:
        return {}
    stmt = built_once(conn, "insert_alerts", lambda c: dialect_insert(c, alerts).on_conflict_do_nothing(
        index_elements=[alerts.c.key]).returning(alerts.c.id, alerts.c.key))
    return {row.key: int(row.id) for row in conn.execute(stmt, [dict(v) for v in values])}


def get_alert(conn: Connection, alert_id: int, lock: bool = False) -> Row[Any] | None:
    query = select(alerts).where(alerts.c.id == alert_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).first()


def update_alert(conn: Connection, alert_id: int, values: Mapping[str, Any]) -> None:
    conn.execute(update(alerts).where(alerts.c.id == alert_id).values(**values))


def open_alerts_of(conn: Connection, customer_id: int) -> list[Row[Any]]:
    return list(conn.execute(select(alerts).where(alerts.c.customer_id == customer_id,
                                                  alerts.c.state != "resolved").order_by(alerts.c.id)))


def count_recent_alerts(conn: Connection, provider: str, kind: str, since: datetime, up_to: int | None = None
                        ) -> int:
    """Alerts of ``kind`` for ``provider`` opened since ``since``; counting stops at ``up_to`` (the caller only
    needs to know whether a threshold is reached, and a burst would otherwise make every count longer)."""
    recent = select(alerts.c.id).where(alerts.c.provider == provider, alerts.c.kind == kind,
                                       alerts.c.opened_at >= since)
    if up_to is not None:
        recent = recent.limit(up_to)
    return int(conn.execute(select(func.count()).select_from(recent.subquery())).scalar_one())


def open_incident(conn: Connection, provider: str, tier: str, since: datetime) -> Row[Any] | None:
    return conn.execute(select(alerts).where(
        alerts.c.provider == provider, alerts.c.kind == "incident", alerts.c.state != "resolved",
        alerts.c.key.like(f"incident:{provider}:{tier}:%"), alerts.c.opened_at >= since,
    ).order_by(alerts.c.id.desc()).limit(1)).first()


def list_alerts(conn: Connection, state: str | None, limit: int, before_id: int | None, *,
                provider: str | None = None, customer_id: int | None = None) -> list[Row[Any]]:
    query = equal_to(select(alerts), alerts, state=state, provider=provider, customer_id=customer_id)
    if before_id is not None:
        query = query.where(alerts.c.id < before_id)
    return list(conn.execute(query.order_by(alerts.c.id.desc()).limit(limit)))


def open_counts(conn: Connection, customer_ids: Sequence[int]) -> dict[int, int]:
    """How many open alerts each of ``customer_ids`` has (those with none are left out)."""
    if not customer_ids:
        return {}
    query = (select(alerts.c.customer_id, func.count()).where(alerts.c.customer_id.in_(list(customer_ids)),
                                                             alerts.c.state == "open")
             .group_by(alerts.c.customer_id))
    return {int(customer_id): int(n) for customer_id, n in conn.execute(query)}


def failed_notifications(conn: Connection, limit: int) -> list[Row[Any]]:
    """The notifications given up on, newest first, each with its alert's title (``alert_title``)."""
    query = (select(notifications, alerts.c.title.label("alert_title"))
             .join(alerts, alerts.c.id == notifications.c.alert_id)
             .where(notifications.c.state == "failed").order_by(notifications.c.id.desc()).limit(limit))
    return list(conn.execute(query))


def notifications_of(conn: Connection, alert_ids: Sequence[int]) -> list[Row[Any]]:
    if not alert_ids:
        return []
    return list(conn.execute(select(notifications).where(notifications.c.alert_id.in_(list(alert_ids)))
                             .order_by(notifications.c.id)))


def due_repeats(conn: Connection, now: datetime, limit: int) -> list[Row[Any]]:
    query = (select(alerts).where(alerts.c.next_repeat_at <= now, alerts.c.state == "open")
             .order_by(alerts.c.next_repeat_at).limit(limit))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return list(conn.execute(query))


def insert_notifications(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        stmt = built_once(conn, "insert_notifications", lambda c: dialect_insert(c, notifications)
                          .on_conflict_do_nothing(index_elements=[notifications.c.key, notifications.c.channel]))
        conn.execute(stmt, list(rows))


def claim_notifications(conn: Connection, channel: str, now: datetime, limit: int, owner: str,
                        lease_until: datetime) -> list[Row[Any]]:
    return claim_leased(conn, notifications,
                  [notifications.c.channel == channel, notifications.c.state == "pending",
                   notifications.c.next_attempt_at <= now, unleased(notifications.c.lease_until, now)],
                  [notifications.c.next_attempt_at, notifications.c.id], limit,
                  {"lease_until": lease_until, "lease_owner": owner})


def finish_notification(conn: Connection, notification_id: int, owner: str, values: Mapping[str, Any]) -> bool:
    result = conn.execute(update(notifications).where(notifications.c.id == notification_id,
                                                      notifications.c.lease_owner == owner).values(**values))
    return bool(result.rowcount)


def count_notifications(conn: Connection) -> list[Row[Any]]:
    return list(conn.execute(select(notifications.c.channel, notifications.c.state, func.count().label("n"))
                             .group_by(notifications.c.channel, notifications.c.state)))


# What the Escalator needs of a claimed customer (the check before an alert); settling reads the whole row again,
# under its lock.


def recent_alerts(conn: Connection, provider: str, kind: str, since: datetime) -> list[Row[Any]]:
    return list(conn.execute(select(alerts).where(alerts.c.provider == provider, alerts.c.kind == kind,
                                                  alerts.c.opened_at >= since, alerts.c.state != "resolved")))


def count_open_members(conn: Connection, incident_id: int) -> int:
    return int(conn.execute(select(func.count()).select_from(alerts).where(
        alerts.c.incident_id == incident_id, alerts.c.state != "resolved")).scalar_one())
