"""The only code that turns plans into rows: the customers' new columns, history, alerts raised and resolved.

It runs in the caller's transaction (one per API call, poll result or escalation check; one per batch for the
applier) and never commits. Once the caller has committed, ``published`` counts the moves and hands their
change notices to whoever listens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from tracker.alerts import AlertSettings, raise_alerts, resolve_customer
from tracker.db import queries
from tracker.metrics import Metrics
from tracker.transitions.plans import Plan

log = logging.getLogger("tracker.transitions")
Listener = Callable[[list[dict[str, Any]]], None]


class ConcurrentChange(Exception):
    """A customer's row changed between the read and the write (its version moved)."""


class Writes:
    def __init__(self, alerts: AlertSettings | None = None, metrics: Metrics | None = None) -> None:
        self.alerts = alerts  # None: no alerts are raised or resolved (a bare replay, some tests)
        self.metrics = metrics
        self.listeners: list[Listener] = []

    def write(self, conn: Connection, plans: Sequence[Plan], now: datetime) -> list[dict[str, Any]]:
        """Store ``plans`` (in order; several may concern one customer, each planned from the one before) and
        return their change notices. Raises ``ConcurrentChange`` when a customer's row is no longer at the
        version its first plan read: nothing of the transaction is then to be kept."""
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
        if self.alerts is not None:
            raised = [alert for planned in plans for alert in planned.alerts]
            if raised:
                raise_alerts(conn, self.alerts, raised, now)
            for planned in plans:
                if planned.resolve_tier_alerts:
                    resolve_customer(conn, self.alerts, {**planned.after.named(), "pending_since": None}, now)
        for planned in plans:
            for alert in planned.alerts:
                if alert.kind == "unknown_status":
                    log.warning("%s sent an undocumented status for customer %s; kept raw, treated as in progress",
                                alert.provider, planned.before.id)
                    if self.metrics is not None:
                        self.metrics.unknown_status.labels(alert.provider).inc()
        return [planned.change for planned in plans if planned.change is not None]

    def published(self, changes: list[dict[str, Any]]) -> None:
        """After the commit that stored ``changes``: count them and tell the listeners."""
        if not changes:
            return
        for change in changes:
            log.info("customer %s: %s -> %s (%s, %s)", change["customer_id"], change["from"], change["to"],
                     change["trigger"], change["source"])
            if self.metrics is not None:
                self.metrics.observe_transition(change["provider"], change["from"], change["to"], change["trigger"],
                                                change["source"])
        for listener in self.listeners:
            listener(changes)
