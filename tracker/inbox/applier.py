"""Applying stored events: the inbox's rows, in arrival order, through the one transition path.

The applier claims the oldest rows not applied yet, parses each stored body again, plans it against its
customer (``tracker.transitions.plans``: several events of one customer in a batch are planned one after the
other), writes the plans (``tracker.transitions.writes``) and records every row's outcome and reason, all in
one transaction. A batch that fails as a whole is applied again one event at a time, so one bad event never
holds back the others: what fails alone is an ``error``, tried again later, then left for ``tracker replay``.

It runs in a thread of every process (``serve``, also with ``--no-worker``, and ``worker``), woken as soon as
this process has stored a batch and, on PostgreSQL, by ``NOTIFY`` from any other process (``Lease``). On
PostgreSQL one process at a time applies (a session advisory lock, released by the server when that process or
its connection dies, so another takes over); the row locks would keep two appliers correct anyway.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row
from sqlalchemy.exc import DBAPIError

from tracker.clock import Clock
from tracker.db import inbox, queries
from tracker.db.engine import transient, write_options, write_transaction, writing
from tracker.domain.events import ParsedEvent, ParseError
from tracker.domain.lifecycle import State
from tracker.inbox.lease import Lease
from tracker.metrics import Metrics
from tracker.providers import parse_stored
from tracker.transitions.plans import CUSTOMER_COLUMNS, Customer, Plan, Rules, plan
from tracker.transitions.writes import ConcurrentChange, Writes

log = logging.getLogger("tracker.inbox")
MAX_ATTEMPTS = 5  # an event that fails this often is left as ``error`` for ``tracker replay``
# Rows a batch claims at most. On SQLite a batch holds the database's one write lock from its start, and the
# inbox writer (every webhook's acknowledgement) waits for it: batches stay short there.
BATCH = {"sqlite": 100, "postgresql": 500}
IDLE_WAIT = 1.0  # seconds between looks at the inbox when nothing wakes the applier


@dataclass(frozen=True)
class Applied:
    """One event's outcome, as recorded on its inbox row."""

    event_id: int
    outcome: str
    reason: str | None
    customer_id: int | None = None


@dataclass
class _Batch:
    marks: list[dict[str, Any]]  # each row's outcome, to record (``inbox.mark``)
    results: list[Applied]
    changes: list[dict[str, Any]]  # to publish once committed


class Applier:
    def __init__(self, engine: Engine, clock: Clock, writes: Writes, rules: Rules, lease: Lease, *,
                 metrics: Metrics | None = None, batch: int | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.writes = writes
        self.rules = rules
        self.metrics = metrics
        self.batch = batch or BATCH.get(engine.dialect.name, 500)
        self._conn: Connection | None = None  # the batches' own connection (``_transaction``)
        self.lease = lease
        self._applying = threading.Lock()  # one batch at a time in this process
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- running --------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stopping.clear()
            self.lease.start(self._wake)
            self._thread = threading.Thread(target=self._run, name="tracker-applier", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._wake.set()
            self._thread.join(timeout=10)
            self._thread = None
            self.lease.stop()
        with self._applying:
            self._drop()

    def wake(self) -> None:
        """Something was stored: look at the inbox now."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            applied = 0
            if self.lease.held():
                try:
                    applied = self.apply_pending()
                except Exception:
                    log.exception("applying stored events failed; trying again shortly")
            if applied:
                self._checkpoint()
            if applied < self.batch:
                self._wake.wait(IDLE_WAIT)

    def drain(self) -> int:
        """Apply every stored event that is due, here and now (tests; a caller that cannot wait for the thread)."""
        total = 0
        while True:
            applied = self.apply_pending()
            total += applied
            if applied == 0:
                return total

    # -- one batch ------------------------------------------------------------------------------------

    def apply_pending(self) -> int:
        """Apply one batch of due events; how many were claimed."""
        with self._applying:
            for attempt in range(5):
                now = self.clock.now()
                try:
                    with self._transaction() as conn:
                        rows = inbox.claim(conn, self.batch, self.clock.now())
                        if not rows:
                            return 0
                        now = self.clock.now()  # after the claim: every row claimed was received before it
                        done = self._apply(conn, rows, now)
                        inbox.mark(conn, done.marks)
                    self._published(done)
                    return len(rows)
                except (ConcurrentChange, DBAPIError) as exc:
                    if attempt < 4 and (isinstance(exc, ConcurrentChange) or transient(exc)):
                        log.info("apply batch retried after %s", type(exc).__name__)
                        continue
                    if isinstance(exc, DBAPIError) and not transient(exc) and exc.connection_invalidated:
                        raise
                    return self._one_by_one(now)
                except Exception:
                    log.exception("an apply batch failed; applying its events one at a time")
                    return self._one_by_one(now)
            return 0

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A write transaction on the applier's own connection, kept between batches (no pool checkout, no ping
        per batch); a failure drops it, and the next batch connects afresh."""
        if self._conn is None:
            self._conn = self.engine.connect().execution_options(**write_options(self.engine))
            if self.engine.dialect.name == "sqlite":
                # Its commits need not wait for the disk: they only record what stored events did, and those
                # rows are durable (the inbox writer's commits sync, and with them everything the WAL holds
                # before them). Power lost before the next sync takes back whole batches, marks and effects
                # together, and the applier applies those events again. It copies the WAL back into the
                # database itself, between its batches (``_checkpoint``), so that no commit on the webhooks'
                # path does (the threshold left is a backstop).
                driver = self._conn.connection.driver_connection
                driver.execute("PRAGMA synchronous=NORMAL")  # type: ignore[union-attr]
                driver.execute(f"PRAGMA wal_autocheckpoint={inbox.BACKSTOP_PAGES}")  # type: ignore[union-attr]
        try:
            with writing(self.engine), self._conn.begin():
                yield self._conn
        except BaseException:
            self._drop()
            raise

    def _checkpoint(self) -> None:
        """SQLite: copy what the WAL holds back into the database, outside any transaction, off the webhooks'
        path (the driver runs it without the GIL)."""
        if self.engine.dialect.name != "sqlite" or self._conn is None:
            return
        with self._applying, contextlib.suppress(Exception):  # the backstop still checkpoints
            self._conn.connection.driver_connection.execute(  # type: ignore[union-attr]
                "PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                if self.engine.dialect.name == "sqlite":  # back to the pool as the pool hands it out
                    driver = conn.connection.driver_connection
                    driver.execute("PRAGMA synchronous=FULL")  # type: ignore[union-attr]
                    driver.execute("PRAGMA wal_autocheckpoint=1000")  # type: ignore[union-attr]
                conn.close()

    def replay(self, event_id: int, actor: str = "replay") -> Applied:
        """Apply one stored event again through the current code (``tracker replay``, the replay API). Its
        recorded outcome changes where it had none yet, was an error or a rejection, or where the replay
        applied a change. Raises ``LookupError`` for an unknown id."""
        with self._applying:
            now = self.clock.now()
            with write_transaction(self.engine) as conn:
                row = inbox.lock(conn, event_id)
                if row is None:
                    raise LookupError(event_id)
                if row.duplicate_of is not None:
                    return Applied(row.id, "duplicate", "a copy of another delivery")
                done = self._apply(conn, [row], now, actor=actor)
                result = done.results[0]
                if row.outcome in ("error", "rejected", inbox.RECEIVED) or result.outcome == "applied":
                    inbox.mark(conn, done.marks)
            self._published(done)
            return result

    def _one_by_one(self, now: datetime) -> int:
        """Apply the due events each in its own transaction; what fails alone is recorded as an error."""
        with write_transaction(self.engine) as conn:
            ids = [row.id for row in inbox.claim(conn, self.batch, now)]
        for event_id in ids:
            try:
                with write_transaction(self.engine) as conn:
                    row = inbox.lock(conn, event_id)
                    if row is None:
                        continue
                    done = self._apply(conn, [row], now)
                    inbox.mark(conn, done.marks)
                self._published(done)
            except Exception as exc:
                log.exception("applying stored event %s failed", event_id)
                with write_transaction(self.engine) as conn:
                    row = inbox.lock(conn, event_id)
                    if row is not None:
                        inbox.mark(conn, [_error(row, None, f"{type(exc).__name__}: {exc}", now)])
        return len(ids)

    def _apply(self, conn: Connection, rows: Sequence[Row[Any]], now: datetime, actor: str | None = None
               ) -> _Batch:
        """Plan every row against its customer (locked, created when first heard of), in order, and write the
        plans; the rows' outcomes are the caller's to record."""
        events: list[tuple[Row[Any], ParsedEvent | None, str | None]] = []
        for row in rows:
            try:
                events.append((row, parse_stored(row.provider, row.body), None))
            except ParseError as exc:
                events.append((row, None, str(exc)))
        current = self._customers(conn, [event for _, event, _ in events if event is not None], now)
        batch = _Batch([], [], [])
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
                batch.marks.append(_error(row, customer.id, f"processing failed: {type(exc).__name__}: {exc}", now))
                batch.results.append(Applied(row.id, "error", batch.marks[-1]["reason"], customer.id))
                continue
            current[key] = planned.after
            plans.append(planned)
            batch.marks.append(_mark(row, planned.outcome, planned.reason, customer.id, now))
            batch.results.append(Applied(row.id, planned.outcome, planned.reason, customer.id))
        batch.changes = self.writes.write(conn, plans, now)
        return batch

    def _customers(self, conn: Connection, events: Sequence[ParsedEvent], now: datetime
                   ) -> dict[tuple[str, str], Customer]:
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

    def _published(self, done: _Batch) -> None:
        self.writes.published(done.changes)
        if self.metrics is not None:
            for mark in done.marks:
                self.metrics.applied.labels(mark["outcome"]).inc()


def _mark(row: Row[Any], outcome: str, reason: str | None, customer_id: int | None, now: datetime
          ) -> dict[str, Any]:
    return {"_id": row.id, "outcome": outcome, "reason": reason, "customer_id": customer_id, "processed_at": now,
            "attempts": row.attempts + 1, "retry_at": None}


def _error(row: Row[Any], customer_id: int | None, reason: str, now: datetime) -> dict[str, Any]:
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
