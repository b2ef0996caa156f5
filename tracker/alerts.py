"""Raising, resolving and acknowledging alerts, and writing their notices to the outbox in the caller's
transaction (so a notice exists exactly when the change that caused it committed)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping

from tracker.alerting.base import Notice
from tracker.db import alert_queries, feed
from tracker.db.engine import write_transaction
from tracker.domain.escalation import Tier
from tracker.transitions.plans import NewAlert

PROVIDER_NAMES = {"blaaiz": "Blaaiz", "connectfi": "connectFi", "cryptopocket": "CryptoPocket"}
SEVERITY = {"critical": "critical", "overdue": "warning", "conflict": "error", "unknown_status": "warning"}
RESOLVE_CHANNELS = frozenset({"pagerduty", "slack", "webhook", "log"})  # channels that take a resolve notice


@dataclass(frozen=True)
class AlertSettings:
    channels: tuple[str, ...] = ("log",)
    critical_repeat: timedelta | None = timedelta(hours=1)
    incident_threshold: int = 10
    incident_window: timedelta = timedelta(minutes=10)


def logged(action: str, alert: Mapping[str, Any] | RowMapping, incident_id: int | None = None) -> dict[str, Any]:
    """What ``Writes.published`` logs of an alert raised or resolved, once the transaction that did it committed."""
    return {"alert_id": alert["id"], "action": action, "kind": alert["kind"], "provider": alert["provider"],
            "customer_id": alert["customer_id"], "incident_id": incident_id}


def advice(kind: str, provider: str, customer: Mapping[str, Any] | RowMapping | None) -> str:
    pcid = customer["provider_customer_id"] if customer is not None else ""
    name = PROVIDER_NAMES.get(provider, provider)
    business = customer is not None and customer["customer_type"] == "business"
    if kind == "overdue":
        if provider == "blaaiz" and business:
            return (f"The business review has passed 5 business days: raise customer {pcid} with Blaaiz support "
                    "(support@blaaiz.com).")
        if provider == "blaaiz":
            return f"Blaaiz now attends enquiries (2 h or more): you may enquire about customer {pcid}."
        return f"{name} publishes no review time: enquire with {name} support about customer {pcid}."
    if kind == "critical":
        if provider == "blaaiz":
            return f"E-mail Blaaiz operations (support@blaaiz.com) with the customer id {pcid}."
        return f"Contact {name} operations with the customer id {pcid}."
    if kind == "conflict":
        return (f"{name} contradicts a verified customer: check {pcid} with {name}; the tracker keeps it verified "
                "until a person decides.")
    if kind == "unknown_status":
        return "Treated as still in progress. Ask the tracker's maintainers to map this value."
    return ""


def notice_for(alert: Mapping[str, Any] | RowMapping, action: str, now: datetime,
               customer: Mapping[str, Any] | RowMapping | None, repeat: int = 0) -> Notice:
    pending_seconds = None
    if customer is not None and customer["pending_since"] is not None:
        pending_seconds = int((now - customer["pending_since"]).total_seconds())
    key = f"alert:{alert['id']}:{action}" + (f":{repeat}" if action == "repeat" else "")
    detail = json.loads(alert["detail"]) if alert["detail"] else {}
    kind = alert["kind"]
    severity = "info" if action == "resolve" else SEVERITY.get(kind, detail.get("severity", "warning"))
    title = alert["title"] if action != "resolve" else f"Resolved: {alert['title']}"
    if action == "repeat":
        title = f"Still unacknowledged: {alert['title']}"
    return Notice(
        key=key, alert_key=alert["key"], alert_id=alert["id"], action=action, kind=kind, severity=severity,
        title=title, advice="" if action == "resolve" else detail.get("advice", ""), provider=alert["provider"],
        created_at=now, customer_id=customer["id"] if customer is not None else None,
        provider_customer_id=customer["provider_customer_id"] if customer is not None else None,
        reference=customer["reference"] if customer is not None else None, pending_seconds=pending_seconds,
        details={k: v for k, v in detail.items() if k not in ("advice",)},
    )


def enqueue(conn: Connection, notice: Notice, channels: Sequence[str], now: datetime) -> None:
    alert_queries.insert_notifications(conn, _notification_rows(notice, channels, now))


def _notification_rows(notice: Notice, channels: Sequence[str], now: datetime) -> list[dict[str, Any]]:
    # Notice is flat but for ``details`` (already plain JSON values): no deep copy (``asdict``) per channel row.
    payload = json.dumps({**{f.name: getattr(notice, f.name) for f in fields(notice)},
                          "created_at": notice.created_at.isoformat()})
    return [{
        "key": notice.key, "alert_id": notice.alert_id, "channel": channel, "action": notice.action,
        "payload": payload, "state": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now,
    } for channel in channels]


def _alert_values(settings: AlertSettings, kind: str, key: str, provider: str, now: datetime, title: str,
                  customer: Mapping[str, Any] | RowMapping | None, attempt: int | None,
                  detail: Mapping[str, Any] | None) -> dict[str, Any]:
    body = {"advice": advice(kind, provider, customer), **(detail or {})}
    return {
        "key": key, "kind": kind, "provider": provider, "customer_id": customer["id"] if customer else None,
        "attempt": attempt, "state": "open", "title": title, "detail": json.dumps(body), "opened_at": now,
        "repeats": 0,
        "next_repeat_at": now + settings.critical_repeat if kind == Tier.CRITICAL.value and settings.critical_repeat
        else None,
    }


def raise_alerts(conn: Connection, settings: AlertSettings, new: Sequence[NewAlert], now: datetime
                 ) -> list[dict[str, Any]]:
    """Several alerts of the kinds that never fold into a provider incident (conflict, unknown_status), each
    once per key, in two statements whatever their number: one for the alerts, one for all their notices.
    ``raise_alert`` does the same for one. Returns what to log of those that were new (``logged``). (The
    webhook writer runs the same two steps on its own cursor: ``prepare_alerts``, then
    ``notification_rows_for`` the ids the insert returned.)"""
    prepared = prepare_alerts(new, settings, now)
    if not prepared:
        return []
    ids = alert_queries.insert_alerts(conn, [values for _, values in prepared.values()])
    alert_queries.insert_notifications(conn, notification_rows_for(prepared, ids, settings, now))
    return [logged("raised", {**prepared[key][1], "id": alert_id})
            for key, alert_id in sorted(ids.items(), key=lambda item: item[1])]


def prepare_alerts(new: Sequence[NewAlert], settings: AlertSettings, now: datetime
                   ) -> dict[str, tuple[NewAlert, dict[str, Any]]]:
    """The alerts table's rows for ``new`` (the first of each key), by key. Refuses tier alerts."""
    prepared: dict[str, tuple[NewAlert, dict[str, Any]]] = {}
    for alert in new:
        if alert.kind in (Tier.OVERDUE, Tier.CRITICAL):
            raise ValueError("tier alerts may fold into an incident: raise them one by one with raise_alert")
        if alert.key not in prepared:
            prepared[alert.key] = (alert, _alert_values(settings, alert.kind, alert.key, alert.provider, now,
                                                        alert.title, alert.customer, None, alert.detail))
    return prepared


def notification_rows_for(prepared: Mapping[str, tuple[NewAlert, dict[str, Any]]], ids: Mapping[str, int],
                          settings: AlertSettings, now: datetime) -> list[dict[str, Any]]:
    """The notices (one row per channel) of the alerts that were new: ``ids`` by key, as the insert returned
    them (a key that existed already is not there)."""
    rows: list[dict[str, Any]] = []
    for key, alert_id in sorted(ids.items(), key=lambda item: item[1]):
        alert, values = prepared[key]
        rows += _notification_rows(notice_for({**values, "id": alert_id}, "trigger", now, alert.customer),
                                   settings.channels, now)
    return rows


def raise_alert(conn: Connection, settings: AlertSettings, *, key: str, kind: str, provider: str, now: datetime,
                title: str, customer: Mapping[str, Any] | RowMapping | None = None, attempt: int | None = None,
                detail: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Open an alert (once per key) and enqueue its notices; fold it into a provider incident when many
    customers of one provider cross the same tier together. Returns what to log (``logged``): nothing if the
    alert existed, else the alert, after the incident it opened if it did."""
    values = _alert_values(settings, kind, key, provider, now, title, customer, attempt, detail)
    alert_id = alert_queries.insert_alert(conn, values)
    if alert_id is None:
        return []
    alert = {**values, "id": alert_id}
    opened: list[dict[str, Any]] = []
    incident = (_incident(conn, settings, kind, provider, now, opened) if kind in (Tier.OVERDUE, Tier.CRITICAL)
                else None)
    if incident is not None:
        alert_queries.update_alert(conn, alert_id, {"incident_id": incident, "next_repeat_at": None})
        return [*opened, logged("raised", alert, incident)]
    enqueue(conn, notice_for(alert, "trigger", now, customer), settings.channels, now)
    return [logged("raised", alert)]


def _incident(conn: Connection, settings: AlertSettings, tier: str, provider: str, now: datetime,
              opened: list[dict[str, Any]]) -> int | None:
    """The provider incident this tier crossing folds into, opened now (and added to ``opened``) if the
    threshold is reached."""
    since = now - settings.incident_window
    recent = alert_queries.count_recent_alerts(conn, provider, tier, since, up_to=settings.incident_threshold)
    if recent < settings.incident_threshold:
        return None
    existing = alert_queries.open_incident(conn, provider, tier, since)
    if existing is not None:
        return int(existing.id)
    name = PROVIDER_NAMES.get(provider, provider)
    minutes = int(settings.incident_window.total_seconds() // 60)
    title = (f"{name}: {settings.incident_threshold} or more customers crossed {tier} within {minutes} min "
             "(provider-level incident)")
    detail = {"advice": f"Likely a delay or outage at {name}: contact {name} once about the incident, not per "
                        "customer. The customers are listed under this alert.", "tier": tier,
              "severity": "critical" if tier == Tier.CRITICAL.value else "warning"}
    values = {"key": f"incident:{provider}:{tier}:{now.isoformat()}", "kind": "incident", "provider": provider,
              "customer_id": None, "attempt": None, "state": "open", "title": title, "detail": json.dumps(detail),
              "opened_at": now, "repeats": 0, "next_repeat_at": None}
    incident_id = alert_queries.insert_alert(conn, values)
    if incident_id is None:  # same key in the same instant: the other one is ours
        found = alert_queries.open_incident(conn, provider, tier, since)
        return None if found is None else int(found.id)
    enqueue(conn, notice_for({**values, "id": incident_id}, "trigger", now, None), settings.channels, now)
    opened.append(logged("raised", {**values, "id": incident_id}))
    # The open per-customer alerts of this crossing fold into it.
    for row in alert_queries.recent_alerts(conn, provider, tier, since):
        if row.incident_id is None and row.id != incident_id:
            alert_queries.update_alert(conn, row.id, {"incident_id": incident_id, "next_repeat_at": None})
    return incident_id


def resolve_customer(conn: Connection, settings: AlertSettings, customer: Mapping[str, Any] | RowMapping,
                     now: datetime) -> list[dict[str, Any]]:
    """The customer left ``pending``: resolve its open tier alerts and tell the channels that take resolves.
    Returns what to log of the alerts (and incidents) resolved (``logged``)."""
    resolved: list[dict[str, Any]] = []
    for alert in alert_queries.open_alerts_of(conn, customer["id"]):
        if alert.kind not in (Tier.OVERDUE.value, Tier.CRITICAL.value):
            continue
        alert_queries.update_alert(conn, alert.id, {"state": "resolved", "resolved_at": now, "next_repeat_at": None})
        resolved.append(logged("resolved", alert._mapping, alert.incident_id))
        if alert_queries.notifications_of(conn, [alert.id]):  # it was announced (not folded at birth): announce the end
            enqueue(conn, notice_for(alert._mapping, "resolve", now, {**customer, "pending_since": None}),
                    _resolve_channels(settings), now)
        if alert.incident_id is not None and alert_queries.count_open_members(conn, alert.incident_id) == 0:
            incident = alert_queries.get_alert(conn, alert.incident_id, lock=True)
            if incident is not None and incident.state != "resolved":
                alert_queries.update_alert(conn, incident.id, {"state": "resolved", "resolved_at": now})
                resolved.append(logged("resolved", incident._mapping))
                enqueue(conn, notice_for(incident._mapping, "resolve", now, None), _resolve_channels(settings), now)
    return resolved


def _resolve_channels(settings: AlertSettings) -> list[str]:
    return [channel for channel in settings.channels if channel in RESOLVE_CHANNELS]


def acknowledge(conn: Connection, alert_id: int, actor: str, now: datetime) -> Any:
    alert = alert_queries.get_alert(conn, alert_id, lock=True)
    if alert is None:
        return None
    if alert.state == "open":
        alert_queries.update_alert(conn, alert_id, {"state": "acknowledged", "acknowledged_at": now,
                                              "acknowledged_by": actor, "next_repeat_at": None})
        feed.append(conn, feed.entries(alerts=[logged("acknowledged", alert._mapping, alert.incident_id)]), now)
    return alert_queries.get_alert(conn, alert_id)


def page(engine: Engine, state: str | None, limit: int, before: int | None, *, provider: str | None = None,
         customer_id: int | None = None) -> list[tuple[Any, list[Any]]]:
    """Alerts newest first (``state``, ``provider``, ``customer_id``: only those), each with its notifications."""
    with engine.connect() as conn:
        rows = alert_queries.list_alerts(conn, state, limit, before, provider=provider, customer_id=customer_id)
        notices = alert_queries.notifications_of(conn, [row.id for row in rows])
    by_alert: dict[int, list[Any]] = {}
    for notice in notices:
        by_alert.setdefault(notice.alert_id, []).append(notice)
    return [(row, by_alert.get(row.id, [])) for row in rows]


def get(engine: Engine, alert_id: int) -> Any:
    """One alert, or None."""
    with engine.connect() as conn:
        return alert_queries.get_alert(conn, alert_id)


def open_counts(engine: Engine, customer_ids: Sequence[int]) -> dict[int, int]:
    """How many open alerts each of ``customer_ids`` has (those with none are left out)."""
    with engine.connect() as conn:
        return alert_queries.open_counts(conn, customer_ids)


def failed_deliveries(engine: Engine, limit: int) -> list[Any]:
    """The notifications given up on, newest first, with their alert's title (``alert_title``)."""
    with engine.connect() as conn:
        return alert_queries.failed_notifications(conn, limit)


def acknowledge_by(engine: Engine, alert_id: int, actor: str, now: datetime) -> tuple[Any, list[Any]] | None:
    """Acknowledge one alert (stops critical repeats); the alert and its notifications, None if unknown."""
    with write_transaction(engine) as conn:
        row = acknowledge(conn, alert_id, actor, now)
        if row is None:
            return None
        return row, alert_queries.notifications_of(conn, [alert_id])
