"""Escalation: the SLA clock's deadlines are rows (``customers.deadline_at``), claimed like polls, so a threshold
is raised within a tick of being crossed, once, also after downtime. A move sets or clears them
(``tracker.transitions.plans``).

Before raising a tier for a provider that can be polled, the customer is polled once (within a short budget):
no alert for a case that has in fact been decided.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row
from sqlalchemy.exc import DBAPIError

from tracker.alerts import AlertSettings, raise_alert
from tracker.clock import Clock
from tracker.db import alert_queries, queries
from tracker.db.engine import write_transaction
from tracker.domain.escalation import EscalationPolicy, Tier, tier_at
from tracker.domain.lifecycle import State
from tracker.metrics import Metrics
from tracker.providers.base import CustomerRef, ProviderError, StatusReport
from tracker.transitions.plans import Customer, Rules, deadline, plan
from tracker.transitions.writes import ConcurrentChange, Notices, Writes

log = logging.getLogger("tracker.escalation")
ORDER = (Tier.NONE, Tier.OVERDUE, Tier.CRITICAL)
CHECK_BUDGET = timedelta(seconds=0.8)  # the check before an alert must not delay the alert past its tick
# Customers settled per transaction. One commit each cost a WAL flush per customer (7.6 ms a customer on
# PostgreSQL on a slow disk, too slow for 100 crossings a second); a few dozen share one, and SQLite's write
# lock (which webhooks wait for) is still held only briefly.
SETTLE_CHUNK = 25
SETTLE_THREADS = 4  # PostgreSQL: chunks settled at once (each on a pooled connection)


class Escalator:
    def __init__(self, engine: Engine, clock: Clock, policy: EscalationPolicy, alerts: AlertSettings, *,
                 owner: str, writes: Writes | None = None, rules: Rules | None = None,
                 lease: timedelta = timedelta(seconds=30), checker: Any = None, metrics: Metrics | None = None,
                 batch: int = 500) -> None:
        self.engine = engine
        self.clock = clock
        self.policy = policy
        self.alerts = alerts
        self.writes = writes or Writes(alerts, metrics)
        self.rules = rules or Rules(escalation=policy)
        self.owner = owner
        self.lease = lease
        self.checker = checker  # the Poller, for the check before an alert; None: no checks
        self.metrics = metrics
        self.batch = batch

    async def tick(self) -> int:
        """Raise every due threshold (and due repeats); returns how many customers were looked at."""
        total = 0
        while True:
            rows = await asyncio.to_thread(self._claim)
            if not rows:
                break
            reports = await self._check(rows)
            await asyncio.to_thread(self._settle, rows, reports)
            total += len(rows)
            if len(rows) < self.batch:
                break
        await asyncio.to_thread(self._repeats)
        return total

    def _begin(self) -> AbstractContextManager[Connection]:
        return write_transaction(self.engine)

    def _claim(self) -> list[Row[Any]]:
        now = self.clock.now()
        with self._begin() as conn:
            return queries.claim_deadlines(conn, now, self.batch, self.owner, now + self.lease)

    async def _check(self, rows: list[Row[Any]]) -> dict[int, StatusReport]:
        """Poll each customer whose provider can be polled, once, within the check budget."""
        plans = getattr(self.checker, "plans", {})
        pollable = [row for row in rows if row.provider in plans and row.state == State.PENDING.value]
        if not pollable:
            return {}

        async def one(row: Row[Any]) -> tuple[int, StatusReport | None]:
            try:
                report = await plans[row.provider].adapter.fetch_status(
                    CustomerRef(row.provider_customer_id, row.customer_type, row.application_id))
            except (ProviderError, Exception) as exc:  # no answer: alert anyway, the case is still open
                log.info("check before alert failed for customer %s: %s", row.id, exc)
                return row.id, None
            return row.id, report

        done, pending = await asyncio.wait([asyncio.create_task(one(row)) for row in pollable],
                                           timeout=CHECK_BUDGET.total_seconds())
        for task in pending:
            task.cancel()
        results = [task.result() for task in done]
        return {customer_id: report for customer_id, report in results if report is not None}

    def _settle(self, rows: list[Row[Any]], reports: dict[int, StatusReport]) -> None:
        """Up to ``SETTLE_CHUNK`` customers a transaction, each in a savepoint of its own: one commit (one WAL
        flush) for many customers, and a customer that fails is rolled back alone. A transaction that fails
        as a whole leaves its customers claimed: they are retried after their lease."""
        # In id order, as the webhook writer locks customers: a chunk holds the locks of the customers it has
        # settled until it commits, and two transactions taking the same rows in opposite orders deadlock.
        rows = sorted(rows, key=lambda row: int(row.id))
        chunks = [rows[start:start + SETTLE_CHUNK] for start in range(0, len(rows), SETTLE_CHUNK)]
        if len(chunks) == 1 or self.engine.dialect.name == "sqlite":  # SQLite: one writer at a time anyway
            for chunk in chunks:
                self._settle_chunk(chunk, reports)
            return
        # PostgreSQL: the chunks in parallel transactions (their customers are disjoint, each claimed by us),
        # so one chunk's round trips to the server overlap another's work.
        with ThreadPoolExecutor(min(len(chunks), SETTLE_THREADS), thread_name_prefix="tracker-settle") as pool:
            list(pool.map(lambda chunk: self._settle_chunk(chunk, reports), chunks))

    def _settle_chunk(self, chunk: list[Row[Any]], reports: dict[int, StatusReport]) -> None:
        changes = Notices()
        try:
            with self._begin() as conn:
                for claimed in chunk:
                    changes.gather(self._settle_alone(conn, claimed.id, reports.get(claimed.id)))
            self.writes.published(changes)
        except Exception:
            log.exception("escalating customers %s failed; they are retried after their lease",
                          ", ".join(str(claimed.id) for claimed in chunk))

    def _settle_alone(self, conn: Connection, customer_id: int, report: StatusReport | None) -> Notices:
        """Settle one customer in a savepoint of its own; the notices of what its check moved and the alerts it
        raised (for ``Writes.published``)."""
        try:
            with conn.begin_nested():
                return self._settle_one(conn, customer_id, report)
        except ConcurrentChange:
            log.info("customer %s changed while escalating; the next tick looks again", customer_id)
        except Exception as exc:
            if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                raise  # the transaction is gone: the whole chunk is retried after its lease
            log.exception("escalating customer %s failed; it is retried after its lease", customer_id)
        return Notices()

    def _settle_one(self, conn: Connection, customer_id: int, report: StatusReport | None) -> Notices:
        now = self.clock.now()
        row = queries.lock_customer(conn, customer_id)
        if row is None or row.deadline_lease_owner != self.owner:
            return Notices()
        changes = Notices()
        if report is not None:
            planned = plan(Customer.of(row._mapping), report.signal, now, self.rules, actor=f"check:{self.owner}",
                           flags=tuple(report.flags),
                           unknown_status=report.provider_status if report.unknown else None,
                           extra={"last_polled_at": now, "last_signal_at": now})
            changes = self.writes.write(conn, [planned], now)
            row = queries.lock_customer(conn, customer_id)
            assert row is not None
        values: dict[str, Any] = {"deadline_lease_until": None, "deadline_lease_owner": None}
        if row.state != State.PENDING.value:
            values.update(deadline_at=None, deadline_tier=None)
        else:
            customer_type = row.customer_type if row.customer_type != "unknown" else "individual"
            thresholds = self.policy.thresholds(row.provider, customer_type)
            reached = tier_at(thresholds, row.pending_since, now)
            current = Tier(row.tier)
            raised: list[dict[str, Any]] = []
            for tier in ORDER[ORDER.index(current) + 1:ORDER.index(reached) + 1]:
                raised += self._raise(conn, row, tier, now)
            self.writes.alerts_changed(conn, raised, now)
            changes.alerts += raised
            if ORDER.index(reached) > ORDER.index(current):
                values["tier"] = reached.value
                values["version"] = row.version + 1
                values["updated_at"] = now
            values.update(deadline(self.policy, row.provider, customer_type, row.pending_since,
                                   max(reached, current, key=ORDER.index)))
        values.update(_id=row.id, _version=row.version)
        if queries.update_customers(conn, [values]) != 1:
            raise ConcurrentChange(f"customer {row.id} changed meanwhile")
        return changes

    def _raise(self, conn: Connection, row: Row[Any], tier: Tier, now: datetime) -> list[dict[str, Any]]:
        """Raise the ``tier`` alert of this attempt; what ``Writes.published`` is to log once it is committed."""
        pending = int((now - row.pending_since).total_seconds()) if row.pending_since else 0
        name = row.provider
        title = (f"{name} verification of {row.provider_customer_id} pending {pending // 3600} h "
                 f"{(pending % 3600) // 60:02d} min: {tier.value}")
        raised = raise_alert(conn, self.alerts, key=f"customer:{row.id}:attempt:{row.attempts}:{tier.value}",
                            kind=tier.value, provider=row.provider, now=now, customer=row._mapping,
                            attempt=row.attempts, title=title,
                            detail={"tier": tier.value, "pending_since": row.pending_since.isoformat()
                                    if row.pending_since else None})
        if raised and self.metrics is not None:
            self.metrics.alerts.labels(row.provider, tier.value).inc()
        return raised

    def _repeats(self) -> None:
        """Unacknowledged critical alerts are announced again every ``critical_repeat``."""
        repeat = self.alerts.critical_repeat
        if not repeat:
            return
        from tracker.alerts import enqueue, notice_for

        now = self.clock.now()
        with self._begin() as conn:
            for alert in alert_queries.due_repeats(conn, now, self.batch):
                customer = queries.get_customer(conn, alert.customer_id) if alert.customer_id else None
                count = alert.repeats + 1
                enqueue(conn, notice_for(alert._mapping, "repeat", now, customer._mapping if customer else None,
                                         repeat=count), self.alerts.channels, now)
                alert_queries.update_alert(conn, alert.id, {"repeats": count, "next_repeat_at": now + repeat})
