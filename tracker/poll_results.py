"""What a poll's answer or failure does to its customer: planned and written in one transaction with the
customer's next due time and the provider's shared state, so a crash between the two can neither poll nor apply
twice. A result is kept only while its poller still holds the customer's claim."""

from __future__ import annotations

import logging
import random
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row

from tracker.clock import Clock
from tracker.db import queries
from tracker.domain.polling import PollPolicy, PollSubject, failure_backoff, next_poll
from tracker.metrics import Metrics
from tracker.provider_gate import ProviderGate, describe
from tracker.providers.base import ProviderError, StatusReport
from tracker.transitions.plans import Customer, Rules
from tracker.transitions.plans import plan as plan_change
from tracker.transitions.writes import ConcurrentChange, Writes

log = logging.getLogger("tracker.poller")


class PollResults:
    def __init__(self, gate: ProviderGate, clock: Clock, policy: PollPolicy, rules: Rules, writes: Writes, *,
                 owner: str, metrics: Metrics | None, rng: random.Random) -> None:
        self.gate = gate
        self.clock = clock
        self.policy = policy
        self.rules = rules
        self.writes = writes
        self.owner = owner
        self.metrics = metrics
        self.rng = rng

    def success(self, provider: str, customer_id: int, report: StatusReport, actor: str | None = None
                ) -> list[dict[str, Any]]:
        """Apply the provider's answer; the change notices of the moves it made (none: nothing moved)."""
        now = self.clock.now()
        changes: list[dict[str, Any]] = []
        with self.gate.begin() as conn:
            row = self._held(conn, customer_id)
            if row is not None:
                planned = plan_change(Customer.of(row._mapping), report.signal, now, self.rules,
                                      actor=actor or f"poll:{self.owner}", flags=tuple(report.flags),
                                      unknown_status=report.provider_status if report.unknown else None)
                after = planned.after
                subject = PollSubject(provider, row.customer_type, after.snapshot.state, after.snapshot.pending_since,
                                      now, now)
                bookkeeping = {"next_poll_at": anchored(next_poll(subject, self.policy, now), row.next_poll_at, now),
                               "poll_lease_until": None, "poll_lease_owner": None, "poll_failures": 0,
                               "last_polled_at": now, "last_signal_at": now, "last_poll_error": None}
                try:
                    changes = self.writes.write(conn, [replace(planned, values={**planned.values, **bookkeeping})],
                                                now)
                except ConcurrentChange:
                    log.info("customer %s changed during its poll; the next poll will see it", customer_id)
                    raise
            self.gate.result(conn, provider, None, now)
        if self.metrics is not None:
            self.metrics.polls.labels(provider, "ok").inc()
        self.writes.published(changes)
        return changes

    def failure(self, provider: str, customer_id: int, error: ProviderError) -> None:
        """Back the customer off (growing delays with jitter) and count the failure against the provider."""
        now = self.clock.now()
        log.warning("poll of %s customer %s failed: %s (%s)", provider, customer_id, error.message, error.kind)
        with self.gate.begin() as conn:
            row = self._held(conn, customer_id)
            if row is not None:
                failures = row.poll_failures + 1
                delay = failure_backoff(failures, self.policy, self.rng.random())
                queries.update_customers(conn, [{
                    "_id": row.id, "_version": row.version, "poll_failures": failures,
                    "next_poll_at": now + delay, "poll_lease_until": None, "poll_lease_owner": None,
                    "last_polled_at": now, "last_poll_error": describe(error),
                }])
            self.gate.result(conn, provider, error, now)
        if self.metrics is not None:
            self.metrics.polls.labels(provider, error.kind).inc()

    def release(self, customer_id: int) -> None:
        """Give a claim back unpolled (a poll that could not be sent), the customer as it was."""
        with self.gate.begin() as conn:
            row = self._held(conn, customer_id)
            if row is not None:
                queries.update_customers(conn, [{"_id": row.id, "_version": row.version,
                                                 "poll_lease_until": None, "poll_lease_owner": None}])

    def _held(self, conn: Connection, customer_id: int) -> Row[Any] | None:
        """The customer row, locked, if this worker still holds its claim."""
        row = queries.lock_customer(conn, customer_id)
        if row is None or row.poll_lease_owner != self.owner:
            log.info("claim on customer %s was lost (lease expired); dropping this result", customer_id)
            return None
        return row


def anchored(planned: datetime | None, due: datetime | None, now: datetime) -> datetime | None:
    """Keep a customer's cadence: its next poll counts from when this poll was due, not from when its answer
    came back. Counted from the answer, every interval would also carry the wait for the tick, for the pacing
    slot and for the provider (bench/workers: a 2 s interval became 2.26 s). A poll later than half the delay
    is not caught up (the delay then counts from now), so two polls are never closer than half the delay."""
    if planned is None or due is None or due >= now:
        return planned
    delay = planned - now
    late = now - due
    if delay <= timedelta(0) or late > delay / 2:
        return planned
    return planned - late
