"""The inbox writer: many request tasks' deliveries, stored together by one thread (group commit).

The thread takes whatever has queued up while its previous store ran, stores it in one statement on a
connection it keeps (``tracker.inbox.store``), answers every waiting request, then wakes the applier: one
round trip serves many requests, and nobody waits for a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from tracker.db import inbox
from tracker.db.engine import transient, writing
from tracker.errors import DatabaseUnavailable
from tracker.inbox.store import Delivery, Receipt, store
from tracker.metrics import Metrics

log = logging.getLogger("tracker.inbox")


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
        self._connections = inbox.Connections(engine)
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
                with writing(self.engine):
                    return store(self._connections.get(), self._connections.dialect, deliveries,
                                 wake=self.others_apply())
            except (DBAPIError, self.engine.dialect.loaded_dbapi.Error) as exc:
                self._connections.drop(broken=True)  # whatever went wrong, the next try starts afresh
                if attempt < 4 and transient(exc):
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


def _resolve(pairs: list[tuple[asyncio.Future[Receipt], Any]]) -> None:
    for future, value in pairs:
        if future.done():
            continue
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)
