"""Planning a batch of stored events: each parsed again, planned against its customer (locked, created when first
heard of) through the one transition path (``tracker.transitions.plans``; several events of one customer are
planned one after the other), and the plans written (``tracker.transitions.writes``), in the caller's
transaction. The rows' outcomes are returned for the caller to record with them (``inbox.mark``); a provider's
last webhook is noted on its shared row (``Planner.heard``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row

from tracker.db import queries
from tracker.domain.events import ParsedEvent, ParseError
from tracker.domain.lifecycle import State
from tracker.providers import parse_stored
from tracker.transitions.plans import CUSTOMER_COLUMNS, Customer, Plan, Rules, plan
from tracker.transitions.writes import Writes

log = logging.getLogger("tracker.inbox")
MAX_ATTEMPTS = 5  # an event that fails this often is left as ``error`` for ``tracker replay``
# How stale a provider's "last webhook" may be: written at most this often, as the applier's batches go by.
HEARD_RESOLUTION = timedelta(seconds=30)


@dataclass(frozen=True)
class Applied:
    """One event's outcome, as recorded on its inbox row."""

    event_id: int
    outcome: str
    reason: str | None
    customer_id: int | None = None


@dataclass
class Batch:
    marks: list[dict[str, Any]]  # each row's outcome, to record (``inbox.mark``)
    results: list[Applied]
    changes: list[dict[str, Any]]  # to publish once committed


class Planner:
    """Plans and writes batches of stored events (``apply``) with the deployment's rules and writes."""

    def __init__(self, writes: Writes, rules: Rules) -> None:
        self.writes = writes
        self.rules = rules
        self._heard: dict[str, datetime] = {}  # the last webhook time noted per provider

    def apply(self, conn: Connection, rows: Sequence[Row[Any]], now: datetime, actor: str | None = None
              ) -> Batch:
        """Plan every row against its customer (locked, created when first heard of), in order, and write the
        plans; the rows' outcomes are the caller's to record."""
        events: list[tuple[Row[Any], ParsedEvent | None, str | None]] = []
        for row in rows:
            try:
                events.append((row, parse_stored(row.provider, row.body), None))
            except ParseError as exc:
                events.append((row, None, str(exc)))
        current = _customers(conn, [event for _, event, _ in events if event is not None], now)
        batch = Batch([], [], [])
        plans: list[Plan] = []
        for row, event, problem in events:
            if event is None or event.signal is None or event.provider_customer_id is None:
                outcome, reason = ("rejected", problem) if event is None else ("ignored", event.ignore_reason)
                batch.marks.append(_mark(row, outcome, reason, None, now))
                batch.results.append(Applied(row.id, outcome, reason))
                continue
            key = (event.provider, event.provider_customer_id)
            customer = current[key]
            learned = None
            if customer.application_id is None and event.application_id is not None:
                # connectFi is polled by application: a customer without one learns it from its callback
                customer = replace(customer, application_id=event.application_id)
                learned = {"application_id": event.application_id}
            try:
                planned = plan(customer, event.signal, now, self.rules, actor=actor or event.provider,
                               event_id=row.id,
                               unknown_status=event.signal.provider_status if event.unknown_status else None,
                               cause=f"event:{event.event_id or event.fingerprint[:16]}",
                               received_at=row.received_at, extra=learned)
            except Exception as exc:  # a bug must not lose the event: keep it, try it again later
                log.exception("processing stored event %s failed", row.id)
                batch.marks.append(failed(row, customer.id, f"processing failed: {type(exc).__name__}: {exc}", now))
                batch.results.append(Applied(row.id, "error", batch.marks[-1]["reason"], customer.id))
                continue
            current[key] = planned.after
            plans.append(planned)
            batch.marks.append(_mark(row, planned.outcome, planned.reason, customer.id, now))
            batch.results.append(Applied(row.id, planned.outcome, planned.reason, customer.id))
        batch.changes = self.writes.write(conn, plans, now)
        return batch

    def heard(self, conn: Connection, rows: Sequence[Row[Any]]) -> dict[str, datetime]:
        """Note on each provider's shared row when its latest webhook among ``rows`` arrived (at most once per
        ``HEARD_RESOLUTION`` per provider: every batch writing the row the pollers lock would slow them). Returns
        what it noted, for ``committed`` once the transaction is."""
        latest: dict[str, datetime] = {}
        for row in rows:
            if row.provider not in latest or row.received_at > latest[row.provider]:
                latest[row.provider] = row.received_at
        noted: dict[str, datetime] = {}
        for provider, at in latest.items():
            last = self._heard.get(provider)
            if last is None or at - last >= HEARD_RESOLUTION:
                queries.note_webhook(conn, provider, at)
                noted[provider] = at
        return noted

    def committed(self, noted: dict[str, datetime]) -> None:
        """What ``heard`` noted is stored (a batch rolled back notes it again with the next one)."""
        self._heard.update(noted)


def _customers(conn: Connection, events: Sequence[ParsedEvent], now: datetime) -> dict[tuple[str, str], Customer]:
    """The batch's customers by (provider, provider id), locked; those heard of first are created."""
    wanted: dict[str, set[str]] = {}
    for event in events:
        if event.signal is not None and event.provider_customer_id is not None:
            wanted.setdefault(event.provider, set()).add(event.provider_customer_id)
    found: dict[tuple[str, str], Customer] = {}
    for provider in sorted(wanted):
        rows = queries.lock_customers(conn, provider, wanted[provider], CUSTOMER_COLUMNS)
        missing = wanted[provider] - rows.keys()
        if missing:
            queries.insert_customers(conn, [_discovered(provider, pcid, now) for pcid in sorted(missing)])
            rows.update(queries.lock_customers(conn, provider, missing, CUSTOMER_COLUMNS))
        found.update({(provider, pcid): Customer.of(row._mapping) for pcid, row in rows.items()})
    return found


def _mark(row: Row[Any], outcome: str, reason: str | None, customer_id: int | None, now: datetime
          ) -> dict[str, Any]:
    return {"_id": row.id, "outcome": outcome, "reason": reason, "customer_id": customer_id, "processed_at": now,
            "attempts": row.attempts + 1, "retry_at": None}


def failed(row: Row[Any], customer_id: int | None, reason: str, now: datetime) -> dict[str, Any]:
    """An event that failed: tried again after a backoff, then left for ``tracker replay``."""
    attempts = row.attempts + 1
    final = attempts >= MAX_ATTEMPTS
    return {"_id": row.id, "outcome": "error", "reason": reason, "customer_id": customer_id,
            "processed_at": now if final else None, "attempts": attempts,
            "retry_at": None if final else now + timedelta(seconds=2 ** attempts)}


def _discovered(provider: str, pcid: str, now: datetime) -> dict[str, Any]:
    """A customer first heard of in a webhook: its type is unknown until the client registers it."""
    return {"provider": provider, "provider_customer_id": pcid, "customer_type": "unknown",
            "state": State.AWAITING_DOCUMENTS.value, "version": 1, "discovered_by": "webhook", "created_at": now,
            "updated_at": now, "tier": "none", "attempts": 0, "rejections": 0}
