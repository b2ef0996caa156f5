"""Storing deliveries: what a webhook waits for before its answer.

A delivery is authenticated and parsed by the web layer; here it becomes one inbox row. Many concurrent
deliveries share one transaction (group commit): one writer thread takes whatever has queued up while its
previous commit ran, so one commit serves many requests and nobody waits for a timer. Nothing here reads or
writes customers: the applier does that afterwards, woken when a batch has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from tracker.db import inbox
from tracker.domain.events import ParsedEvent
from tracker.errors import DatabaseUnavailable
from tracker.metrics import Metrics

log = logging.getLogger("tracker.inbox")


@dataclass
class Delivery:
    """One authenticated delivery. ``body`` is what is stored (personal data removed)."""

    provider: str
    received_at: datetime
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    parsed: ParsedEvent | None = None
    error: str | None = None  # why it could not be parsed: stored as ``rejected``


@dataclass(frozen=True)
class Receipt:
    """What the sender is told: ``accepted`` (stored, to be applied), ``duplicate`` (stored before),
    ``ignored`` (an event type the tracker does not follow), or ``rejected`` (stored, unreadable: 400)."""

    status: str
    event_id: int
    reason: str | None = None


def row_of(delivery: Delivery) -> dict[str, Any]:
    """The inbox row of a delivery (``inbox.COLUMNS`` by name)."""
    event = delivery.parsed
    signal = event.signal if event is not None else None
    if event is None:
        outcome, reason = "rejected", delivery.error
    elif signal is None or event.provider_customer_id is None:
        outcome, reason = "ignored", event.ignore_reason
    else:
        outcome, reason = inbox.RECEIVED, None
    return {
        "provider": delivery.provider, "event_id": event.event_id if event else None,
        "fingerprint": event.fingerprint if event else None, "event_type": event.event_type if event else None,
        "provider_customer_id": event.provider_customer_id if event else None, "customer_id": None,
        "provider_status": signal.provider_status if signal else None,
        "provider_time": signal.provider_time if signal else None,
        "headers": json.dumps(delivery.headers) if delivery.headers else None, "body": delivery.body,
        "received_at": delivery.received_at,
        "processed_at": None if outcome == inbox.RECEIVED else delivery.received_at,
        "outcome": outcome, "reason": reason, "duplicate_of": None, "attempts": 0, "retry_at": None,
    }


def store(connection: Any, dialect: str, deliveries: Sequence[Delivery], *, wake: bool = False) -> list[Receipt]:
    """Store ``deliveries`` on a driver connection in autocommit mode (``Connections``) in one statement; a
    receipt for each. A copy of a stored delivery (same event id, or same content) is not stored again: its
    receipt names the first. ``wake``: notify other processes' appliers with it (PostgreSQL)."""
    rows: list[dict[str, Any]] = []
    first: dict[tuple[str, str, str], int] = {}  # (provider, kind, key) -> index in rows: copies in the batch
    copies: dict[int, int] = {}  # delivery index -> rows index of the original in this batch
    placed: dict[int, int] = {}  # delivery index -> rows index
    for index, delivery in enumerate(deliveries):
        event = delivery.parsed
        keys = [] if event is None else [(delivery.provider, kind, key) for kind, key in
                                         (("id", event.event_id), ("print", event.fingerprint)) if key]
        original = next((first[key] for key in keys if key in first), None)
        if original is not None:
            copies[index] = original
            continue
        placed[index] = len(rows)
        for key in keys:
            first[key] = len(rows)
        rows.append(row_of(delivery))
    ids = inbox.store(connection, dialect, rows, wake=wake and any(r["outcome"] == inbox.RECEIVED for r in rows))
    missing = [i for i, row_id in enumerate(ids) if row_id is None]
    found: dict[tuple[str, str, str], int] = {}
    for provider in {rows[i]["provider"] for i in missing}:
        wanted = [rows[i] for i in missing if rows[i]["provider"] == provider]
        for stored_id, event_id, fingerprint in inbox.originals(
                connection, dialect, provider, [r["event_id"] for r in wanted if r["event_id"]],
                [r["fingerprint"] for r in wanted]):
            for kind, value in (("id", event_id), ("print", fingerprint)):
                if value is not None:
                    found[(provider, kind, value)] = stored_id
    receipts = []
    for index in range(len(deliveries)):
        if index in copies:
            receipts.append(_copy_of(ids[copies[index]], rows[copies[index]], found))
            continue
        row, row_id = rows[placed[index]], ids[placed[index]]
        if row_id is None:
            receipts.append(_copy_of(None, row, found))
        elif row["outcome"] == "rejected":
            receipts.append(Receipt("rejected", row_id, row["reason"]))
        else:
            receipts.append(Receipt("ignored" if row["outcome"] == "ignored" else "accepted", row_id, row["reason"]))
    return receipts


class Connections:
    """A driver connection in autocommit mode, kept by the thread that stores (no pool checkout, no ping, no
    BEGIN or COMMIT of its own: each store is one statement), dropped after a failure."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._raw: Any = None

    def get(self) -> Any:
        if self._raw is None:
            raw = self.engine.raw_connection()
            if self.dialect == "postgresql":
                raw.driver_connection.autocommit = True  # type: ignore[union-attr]
            # SQLite's connections are in the driver's autocommit mode already (tracker.db.engine).
            self._raw = raw
        return self._raw.driver_connection

    def drop(self, broken: bool) -> None:
        raw, self._raw = self._raw, None
        if raw is None:
            return
        with contextlib.suppress(Exception):
            if broken:
                raw.invalidate()
                return
            if self.dialect == "postgresql":
                raw.driver_connection.autocommit = False  # back to the pool as the pool hands it out
            raw.close()


def store_now(engine: Engine, deliveries: Sequence[Delivery], *, wake: bool = False) -> list[Receipt]:
    """Store deliveries on a connection of their own (tests, tools)."""
    connections = Connections(engine)
    try:
        return store(connections.get(), connections.dialect, deliveries, wake=wake)
    finally:
        connections.drop(broken=False)


def _copy_of(stored: int | None, row: dict[str, Any], found: dict[tuple[str, str, str], int]) -> Receipt:
    if stored is None:
        keys = [(row["provider"], "id", row["event_id"]), (row["provider"], "print", row["fingerprint"])]
        stored = next((found[key] for key in keys if key in found), None)
        if stored is None:  # refused as a copy, yet no original: the sender retries (503) rather than be misled
            raise RuntimeError("a delivery was refused as a duplicate but its original was not found")
    return Receipt("duplicate", stored, "already received")


class InboxWriter:
    """Feeds deliveries from many request tasks to one writer thread, which stores whatever has queued up in
    one transaction, answers every waiting request, then wakes the applier (``on_stored``)."""

    def __init__(self, engine: Engine, metrics: Metrics | None = None, on_stored: Callable[[], None] | None = None,
                 others_apply: Callable[[], bool] | None = None, max_batch: int = inbox.CHUNK) -> None:
        self.engine = engine
        self.metrics = metrics
        self.on_stored = on_stored
        # Whether another process may be the applier (PostgreSQL, this one not holding the lease): then each
        # stored batch also notifies it.
        self.others_apply = others_apply or (lambda: False)
        self.max_batch = max_batch
        self._connections = Connections(engine)
        self._queue: queue.SimpleQueue[tuple[Delivery, asyncio.Future[Receipt]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tracker-inbox", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)  # after everything already queued: that is stored first
            self._thread.join(timeout=10)
            self._thread = None

    async def submit(self, delivery: Delivery) -> Receipt:
        """Store one delivery (with whatever else is queued); raises ``DatabaseUnavailable``."""
        if self._thread is None:
            raise RuntimeError("the inbox writer is not started")
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self._queue.put((delivery, future))
        return await future

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._connections.drop(broken=False)

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            self._store(batch)

    def _store(self, batch: list[tuple[Delivery, asyncio.Future[Receipt]]]) -> None:
        deliveries = [delivery for delivery, _ in batch]
        outcome: list[Receipt | BaseException]
        try:
            outcome = list(self._attempt(deliveries))
        except Exception as exc:
            if len(batch) > 1 and not self._environmental(exc):
                # Something in the batch, not the database's state: one delivery must not fail the others (and
                # again at every retry of its sender). Each is stored alone; only what fails alone fails.
                log.warning("a batch of %d deliveries failed (%s); storing them one at a time", len(batch),
                            type(exc).__name__)
                outcome = [self._alone(delivery) for delivery in deliveries]
            else:
                outcome = [self._unavailable(exc, len(batch))] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Receipt], Any]]] = {}
        for (_, future), value in zip(batch, outcome, strict=True):
            by_loop.setdefault(future.get_loop(), []).append((future, value))
        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_resolve, pairs)
        if self.metrics is not None:
            self.metrics.ingest_batch.observe(len(batch))
            for delivery, value in zip(deliveries, outcome, strict=True):
                if isinstance(value, Receipt):
                    self.metrics.observe_webhook(delivery.provider, value.status)
        if self.on_stored is not None:
            self.on_stored()

    def _attempt(self, deliveries: list[Delivery]) -> list[Receipt]:
        for attempt in range(5):
            try:
                return store(self._connections.get(), self._connections.dialect, deliveries,
                             wake=self.others_apply())
            except (DBAPIError, self.engine.dialect.loaded_dbapi.Error) as exc:
                self._connections.drop(broken=True)  # whatever went wrong, the next try starts afresh
                if attempt < 4 and _sqlstate(exc).startswith("40"):  # a deadlock or serialization failure
                    continue
                raise
        raise AssertionError("unreachable")

    def _alone(self, delivery: Delivery) -> Receipt | BaseException:
        try:
            return self._attempt([delivery])[0]
        except Exception as exc:
            return self._unavailable(exc, 1)

    def _unavailable(self, exc: Exception, count: int) -> DatabaseUnavailable:
        """What the senders are told (503, retry later), the cause logged."""
        if isinstance(exc, DatabaseUnavailable):
            return exc
        if isinstance(exc, DBAPIError | self.engine.dialect.loaded_dbapi.Error):
            log.warning("database unavailable for a batch of %d deliveries: %s", count,
                        type(getattr(exc, "orig", None) or exc).__name__)
            return DatabaseUnavailable("the database cannot take the write right now; retry later")
        log.error("storing a batch of %d deliveries failed", count, exc_info=exc)
        return DatabaseUnavailable("the event could not be stored; retry later")

    def _environmental(self, exc: BaseException) -> bool:
        """Whether a failure is the database's state (unreachable, locked, shutting down, out of space: an
        OperationalError, or a dropped connection, anywhere in its causes) rather than something in the batch."""
        operational = (OperationalError, self.engine.dialect.loaded_dbapi.OperationalError)
        seen: BaseException | None = exc
        for _ in range(10):
            if seen is None:
                return False
            if isinstance(seen, operational) or (isinstance(seen, DBAPIError) and seen.connection_invalidated):
                return True
            seen = seen.__cause__ or seen.__context__
        return False


def _sqlstate(exc: BaseException) -> str:
    """The SQLSTATE of a database error, wrapped by SQLAlchemy or raised by the driver's own cursor."""
    return str(getattr(getattr(exc, "orig", None) or exc, "sqlstate", "") or "")


def _resolve(pairs: list[tuple[asyncio.Future[Receipt], Any]]) -> None:
    for future, value in pairs:
        if future.done():
            continue
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)
