"""The only code that turns plans into rows: the customers' new columns, history, alerts raised and resolved.

It runs in the caller's transaction (one per API call, poll result or escalation check; one per batch for the
applier) and never commits. Once the caller has committed, ``published`` logs the moves and the alerts raised
and resolved (a line each, at info), counts the moves and hands their change notices to whoever listens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from tracker.alerts import AlertSettings, raise_alerts, resolve_customer
from tracker.db import feed, queries
from tracker.metrics import Metrics
from tracker.transitions.plans import Plan

log = logging.getLogger("tracker.transitions")
# ids, states and names of our own vocabulary only: never a person's name, an e-mail or a document
CHANGE_LINE = "customer %s %s -> %s: provider=%s trigger=%s source=%s event=%s"
ALERT_LINE = "alert %s %s: kind=%s customer=%s provider=%s incident=%s"
Listener = Callable[[list[dict[str, Any]]], None]


class ConcurrentChange(Exception):
    """A customer's row changed between the read and the write (its version moved)."""


class Notices(list[dict[str, Any]]):
    """What a write hands to ``published``: its change notices (the list itself, empty when nothing moved) and,
    in ``alerts``, the alerts it raised and resolved, logged like the moves once they are committed."""

    def __init__(self, changes: Iterable[dict[str, Any]] = (), alerts: Iterable[dict[str, Any]] = ()) -> None:
        super().__init__(changes)
        self.alerts = list(alerts)

    def gather(self, other: Notices) -> None:
        """Add another write's notices (several writes committed together)."""
        self.extend(other)
        self.alerts += other.alerts


class Writes:
    def __init__(self, alerts: AlertSettings | None = None, metrics: Metrics | None = None) -> None:
        self.alerts = alerts  # None: no alerts are raised or resolved (a bare replay, some tests)
        self.metrics = metrics
        self.listeners: list[Listener] = []
        self.committed: list[Callable[[], None]] = []  # told after each commit that stored moves or alerts

    def write(self, conn: Connection, plans: Sequence[Plan], now: datetime) -> Notices:
        """Store ``plans`` (in order; several may concern one customer, each planned from the one before) and
        return their change notices, with the alerts raised and resolved (``Notices``). Raises
        ``ConcurrentChange`` when a customer's row is no longer at the version its first plan read: nothing of
        the transaction is then to be kept."""
        updates: dict[int, dict[str, Any]] = {}
        for planned in plans:
            if not planned.values:
                continue
            update = updates.get(planned.before.id)
            if update is None:
                updates[planned.before.id] = {**planned.values, "_id": planned.before.id,
                                              "_version": planned.before.snapshot.version}
            else:
                update.update(planned.values)
        if updates and queries.update_customers(conn, list(updates.values())) != len(updates):
            raise ConcurrentChange("a customer changed while its change was being decided")
        queries.insert_history(conn, [planned.history for planned in plans if planned.history is not None])
        alerts: list[dict[str, Any]] = []
        if self.alerts is not None:
            raised = [alert for planned in plans for alert in planned.alerts]
            if raised:
                alerts += raise_alerts(conn, self.alerts, raised, now)
            for planned in plans:
                if planned.resolve_tier_alerts:
                    alerts += resolve_customer(conn, self.alerts, {**planned.after.named(), "pending_since": None},
                                               now)
        for planned in plans:
            for alert in planned.alerts:
                if alert.kind == "unknown_status":
                    log.warning("%s sent an undocumented status for customer %s; kept raw, treated as in progress",
                                alert.provider, planned.before.id)
                    if self.metrics is not None:
                        self.metrics.unknown_status.labels(alert.provider).inc()
        moves = [{**planned.change, "tier": planned.values.get("tier", planned.before.tier)}
                 for planned in plans if planned.change is not None]
        feed.append(conn, feed.entries(moves, alerts), now)
        return Notices(moves, alerts)

    @staticmethod
    def alerts_changed(conn: Connection, alerts: Sequence[dict[str, Any]], now: datetime) -> None:
        """Alert changes made outside ``write`` (escalation's tiers), into the change feed in their
        transaction."""
        feed.append(conn, feed.entries(alerts=alerts), now)

    def published(self, changes: list[dict[str, Any]]) -> None:
        """After the commit that stored what ``write`` returned (``Notices``, or a plain list of change notices):
        log the moves and the alerts, count the moves and tell the listeners."""
        alerts = changes.alerts if isinstance(changes, Notices) else ()
        if not changes and not alerts:
            return
        info = log.isEnabledFor(logging.INFO)  # no formatting, not even the call, when nobody reads it
        for change in changes:
            if info:
                log.info(CHANGE_LINE, change["customer_id"], change["from"], change["to"], change["provider"],
                         change["trigger"], change["source"], change["event_id"])
            if self.metrics is not None:
                self.metrics.observe_transition(change["provider"], change["from"], change["to"], change["trigger"],
                                                change["source"])
        if info:
            for alert in alerts:
                log.info(ALERT_LINE, alert["alert_id"], alert["action"], alert["kind"], alert["customer_id"],
                         alert["provider"], alert["incident_id"])
        if changes:
            for listener in self.listeners:
                listener(changes)
        for hook in self.committed:
            hook()
