"""Applying stored events: the inbox's rows, in arrival order, through the one transition path.

The applier claims the oldest rows not applied yet, plans and writes them (``tracker.inbox.batch``) and records
every row's outcome and reason, all in one transaction. A batch that fails as a whole is applied again one event
at a time, so one bad event never holds back the others: what fails alone is an ``error``, tried again later,
then left for ``tracker replay``.

It runs in a thread of every process (``serve``, also with ``--no-worker``, and ``worker``), woken as soon as
this process has stored a batch and, on PostgreSQL, by ``NOTIFY`` from any other process (``Lease``). On
PostgreSQL one process at a time applies (a session advisory lock, released by the server when that process or
its connection dies, so another takes over); the row locks would keep two appliers correct anyway.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from tracker.clock import Clock
from tracker.db import inbox
from tracker.db.engine import transient, write_options, write_transaction, writing
from tracker.inbox.batch import Applied, Batch, Planner, failed
from tracker.inbox.lease import Lease
from tracker.metrics import Metrics
from tracker.transitions.plans import Rules
from tracker.transitions.writes import ConcurrentChange, Writes

log = logging.getLogger("tracker.inbox")
# Rows a batch claims at most. On SQLite a batch holds the database's one write lock from its start, and the
# inbox writer (every webhook's acknowledgement) waits for it: batches stay short there.
BATCH = {"sqlite": 100, "postgresql": 500}
IDLE_WAIT = 1.0  # seconds between looks at the inbox when nothing wakes the applier


class Applier:
    def __init__(self, engine: Engine, clock: Clock, writes: Writes, rules: Rules, lease: Lease, *,
                 metrics: Metrics | None = None, batch: int | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.writes = writes
        self.planner = Planner(writes, rules)
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
                        done = self.planner.apply(conn, rows, now)
                        noted = self.planner.heard(conn, rows)
                        inbox.mark(conn, done.marks)
                    self.planner.committed(noted)
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
                done = self.planner.apply(conn, [row], now, actor=actor)
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
                    done = self.planner.apply(conn, [row], now)
                    inbox.mark(conn, done.marks)
                self._published(done)
            except Exception as exc:
                log.exception("applying stored event %s failed", event_id)
                with write_transaction(self.engine) as conn:
                    row = inbox.lock(conn, event_id)
                    if row is not None:
                        inbox.mark(conn, [failed(row, None, f"{type(exc).__name__}: {exc}", now)])
        return len(ids)

    def _published(self, done: Batch) -> None:
        self.writes.published(done.changes)
        if self.metrics is not None:
            for mark in done.marks:
                self.metrics.applied.labels(mark["outcome"]).inc()


