"""Inbound provider events: store them durably, apply them to the lifecycle, in one transaction per batch.

A webhook is acknowledged only after the transaction that stores it has committed. Many concurrent
deliveries are committed together (group commit, ``GroupCommitter``): the writer thread takes whatever
has queued up while the previous commit ran, so one commit serves many requests and nobody waits for a
timer. Processing a stored event is pure domain code (``decide``); if it fails for one event, that event
is stored with outcome ``error`` and no ``processed_at``, so ``tracker replay`` can run it again.
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

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from tracker.clock import Clock
from tracker.db import queries
from tracker.db.engine import write_options
from tracker.domain.events import ParsedEvent
from tracker.domain.lifecycle import Decision, Outcome, Snapshot, State, decide
from tracker.errors import DatabaseUnavailable
from tracker.metrics import Metrics

log = logging.getLogger("tracker.ingest")

ANSWER = {
    Outcome.APPLIED: "accepted",
    Outcome.NOOP: "ignored",
    Outcome.NO_TRIGGER: "ignored",
    Outcome.REFUSED: "ignored",
    Outcome.CONFLICT: "conflict",
    Outcome.STALE: "stale",
}
# What the provider is told; the inbox keeps the finer outcome.
PUBLIC_STATUS = {"accepted": "accepted", "duplicate": "duplicate", "ignored": "ignored", "stale": "stale",
                 "conflict": "ignored", "error": "accepted", "rejected": "rejected"}


@dataclass
class Delivery:
    """One authenticated delivery, ready to be stored. ``body`` is what is stored (personal data removed)."""

    provider: str
    received_at: datetime
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    parsed: ParsedEvent | None = None
    error: str | None = None  # why it could not be parsed: stored as ``rejected``


@dataclass(frozen=True)
class IngestResult:
    outcome: str  # accepted | duplicate | ignored | stale | conflict | rejected | error
    event_id: int
    customer_id: int | None = None
    reason: str | None = None

    @property
    def status(self) -> str:
        return PUBLIC_STATUS[self.outcome]


@dataclass
class _Applied:
    outcome: str
    reason: str | None
    customer_id: int | None
    decision: Decision | None = None
    processed: bool = True


class RetryBatch(Exception):
    """Another writer changed a row this batch read; run the batch again."""


class Ingestor:
    """Stores and applies inbound events. One call, one transaction."""

    def __init__(self, engine: Engine, clock: Clock, metrics: Metrics | None = None,
                 on_change: Callable[[list[dict[str, Any]]], None] | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.metrics = metrics
        self.on_change = on_change
        self._write = write_options(engine)

    # -- entry points -------------------------------------------------------------------------------------

    def ingest(self, deliveries: Sequence[Delivery]) -> list[IngestResult]:
        """Store and apply ``deliveries`` in one transaction. Raises ``DatabaseUnavailable``."""
        for attempt in range(5):
            try:
                with self.engine.connect().execution_options(**self._write) as conn, conn.begin():
                    results, changes = self._ingest(conn, deliveries)
                break
            except (IntegrityError, RetryBatch) as exc:
                # A concurrent writer (another process) stored the same event or moved the same customer
                # between our read and our write: re-read and decide again.
                log.info("ingest batch retried after a concurrent write (%s)", type(exc).__name__)
                if attempt == 4:
                    raise DatabaseUnavailable("the database kept refusing the write; retry later") from exc
            except DBAPIError as exc:
                log.warning("database unavailable while storing %d deliveries: %s", len(deliveries),
                            type(exc.orig).__name__ if exc.orig else exc)
                raise DatabaseUnavailable("the database cannot take the write right now; retry later") from exc
        self._after_commit(deliveries, results, changes)
        return results

    def reprocess(self, event_id: int) -> IngestResult:
        """Run one stored event through the current code again (``tracker replay``, the replay API)."""
        from tracker.providers import parse_stored

        with self.engine.connect().execution_options(**self._write) as conn, conn.begin():
            row = queries.get_event(conn, event_id)
            if row is None:
                raise LookupError(event_id)
            if row.duplicate_of is not None:
                return IngestResult("duplicate", row.id, row.customer_id, "a copy of another delivery")
            now = self.clock.now()
            try:
                parsed = parse_stored(row.provider, row.body)
            except ValueError as exc:
                queries.update_event(conn, row.id, {"outcome": "rejected", "reason": str(exc), "processed_at": now})
                return IngestResult("rejected", row.id, None, str(exc))
            applied, changes = self._apply(conn, [(row.id, parsed)], now)
            result = applied[0]
            # The stored outcome is the event's first effect; a replay overwrites it only where that effect was
            # a failure, or where the replay itself moved the customer.
            if row.outcome in ("error", "rejected") or result.outcome == "accepted":
                queries.update_event(conn, row.id, {
                    "outcome": result.outcome, "reason": result.reason, "customer_id": result.customer_id,
                    "processed_at": now if result.processed else None,
                })
        self._publish(changes)
        return IngestResult(result.outcome, row.id, result.customer_id, result.reason)

    # -- the transaction ----------------------------------------------------------------------------------

    def _ingest(self, conn: Connection, deliveries: Sequence[Delivery]
                ) -> tuple[list[IngestResult], list[dict[str, Any]]]:
        now = self.clock.now()
        first_of: dict[tuple[str, str, str], int] = {}  # (provider, kind, key) -> delivery index or -id
        by_provider: dict[str, list[int]] = {}
        for index, delivery in enumerate(deliveries):
            by_provider.setdefault(delivery.provider, []).append(index)
        stored: dict[tuple[str, str, str], int] = {}
        for provider, indexes in by_provider.items():
            parsed = [p for p in (deliveries[i].parsed for i in indexes) if p is not None]
            by_id, by_print = queries.existing_dedupe_keys(
                conn, provider, [p.event_id for p in parsed if p.event_id], [p.fingerprint for p in parsed]
            )
            stored.update({(provider, "id", k): v for k, v in by_id.items()})
            stored.update({(provider, "print", k): v for k, v in by_print.items()})

        duplicate_of: dict[int, tuple[str, int]] = {}  # index -> ("stored", id) | ("batch", index)
        fresh: list[int] = []
        for index, delivery in enumerate(deliveries):
            event = delivery.parsed
            if event is None:
                continue
            keys = [(delivery.provider, "id", event.event_id)] if event.event_id else []
            keys.append((delivery.provider, "print", event.fingerprint))
            original = next(((("stored", stored[k])) for k in keys if k in stored), None)
            if original is None:
                original = next(((("batch", first_of[k])) for k in keys if k in first_of), None)
            if original is not None:
                duplicate_of[index] = original
                continue
            for key in keys:
                first_of[key] = index
            fresh.append(index)

        applied_list, changes = self._apply(conn, [(None, deliveries[i].parsed) for i in fresh  # type: ignore[misc]
                                                   ], now)
        applied = dict(zip(fresh, applied_list, strict=True))

        rows: list[dict[str, Any]] = []
        order: list[int] = []
        later: list[int] = []
        for index, delivery in enumerate(deliveries):
            if index in duplicate_of and duplicate_of[index][0] == "batch":
                later.append(index)  # needs the id of an original inserted in this batch
                continue
            rows.append(self._row(delivery, applied.get(index), duplicate_of.get(index), {}, now))
            order.append(index)
        ids = dict(zip(order, queries.insert_events(conn, rows), strict=True))
        rows = [self._row(deliveries[i], None, duplicate_of[i], ids, now) for i in later]
        ids.update(zip(later, queries.insert_events(conn, rows), strict=True))

        history = []
        for index, result in applied.items():
            if result.decision is not None and result.decision.moved:
                history.append(self._history_row(result, deliveries[index].parsed, ids[index], now))
        queries.insert_history(conn, history)
        for change in changes:
            if change.get("_event_index") is not None:
                change["event_id"] = ids[fresh[change.pop("_event_index")]]
        results = []
        for index, delivery in enumerate(deliveries):
            if delivery.parsed is None:
                results.append(IngestResult("rejected", ids[index], None, delivery.error))
            elif index in duplicate_of:
                results.append(IngestResult("duplicate", ids[index], None, "already received"))
            else:
                result = applied[index]
                results.append(IngestResult(result.outcome, ids[index], result.customer_id, result.reason))
        return results, changes

    def _apply(self, conn: Connection, items: Sequence[tuple[int | None, ParsedEvent]], now: datetime
               ) -> tuple[list[_Applied], list[dict[str, Any]]]:
        """Decide every event against its customer (in order), write customers and (for reprocessing)
        history. Returns the per-event results and the change notices."""
        by_provider: dict[str, set[str]] = {}
        for _, event in items:
            if event.signal is not None and event.provider_customer_id is not None:
                by_provider.setdefault(event.provider, set()).add(event.provider_customer_id)
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for provider, pcids in by_provider.items():
            found = queries.lock_customers(conn, provider, pcids)
            missing = pcids - found.keys()
            if missing:
                queries.insert_customers(conn, [self._discovered(provider, pcid, now) for pcid in sorted(missing)])
                found = queries.lock_customers(conn, provider, pcids)
            rows.update({(provider, pcid): dict(row._mapping) for pcid, row in found.items()})

        snapshots: dict[tuple[str, str], Snapshot] = {}
        results: list[_Applied] = []
        moved_history: list[dict[str, Any]] = []
        changes: list[dict[str, Any]] = []
        for position, (event_row_id, event) in enumerate(items):
            if event.signal is None or event.provider_customer_id is None:
                results.append(_Applied("ignored", event.ignore_reason, None))
                continue
            key = (event.provider, event.provider_customer_id)
            row = rows[key]
            before = snapshots.get(key) or queries.snapshot_of(row)
            try:
                decision = decide(before, event.signal, now)
            except Exception as exc:  # a bug must not lose the event: keep it retryable
                log.exception("processing failed for a %s event of customer %s", event.provider, row["id"])
                results.append(_Applied("error", f"processing failed: {type(exc).__name__}: {exc}", row["id"],
                                        processed=False))
                continue
            snapshots[key] = decision.after
            reason = decision.reason
            if event.unknown_status:
                reason = f"{event.ignore_reason}; {reason}"
            results.append(_Applied(ANSWER[decision.outcome], reason, row["id"], decision))
            if decision.moved:
                change = {"customer_id": row["id"], "provider": event.provider, "from": decision.before.state.value,
                          "to": decision.after.state.value, "trigger": event.signal.trigger.value
                          if event.signal.trigger else None, "version": decision.after.version,
                          "source": event.signal.source.value, "event_id": event_row_id,
                          "_event_index": position if event_row_id is None else None}
                changes.append(change)
                if event_row_id is not None:
                    moved_history.append(self._history_row(results[-1], event, event_row_id, now))
        updates = []
        for key, after in snapshots.items():
            row = rows[key]
            before = queries.snapshot_of(row)
            if after != before:
                values = queries.snapshot_values(after)
                values.update(_id=row["id"], _old_version=row["version"], updated_at=now)
                updates.append(values)
        if queries.update_customers(conn, updates) != len(updates):
            raise RetryBatch()
        queries.insert_history(conn, moved_history)
        return results, changes

    # -- rows ---------------------------------------------------------------------------------------------

    @staticmethod
    def _discovered(provider: str, pcid: str, now: datetime) -> dict[str, Any]:
        return {"provider": provider, "provider_customer_id": pcid, "customer_type": "unknown",
                "state": State.AWAITING_DOCUMENTS.value, "version": 1, "discovered_by": "webhook",
                "created_at": now, "updated_at": now, "tier": "none", "attempts": 0, "rejections": 0}

    @staticmethod
    def _row(delivery: Delivery, applied: _Applied | None, duplicate: tuple[str, int] | None,
             ids: dict[int, int], now: datetime) -> dict[str, Any]:
        event = delivery.parsed
        signal = event.signal if event else None
        row: dict[str, Any] = {
            "provider": delivery.provider,
            "event_id": event.event_id if event else None,
            "fingerprint": event.fingerprint if event else None,
            "event_type": event.event_type if event else None,
            "provider_customer_id": event.provider_customer_id if event else None,
            "customer_id": None,
            "provider_status": signal.provider_status if signal else None,
            "provider_time": signal.provider_time if signal else None,
            "headers": json.dumps(delivery.headers) if delivery.headers else None,
            "body": delivery.body,
            "received_at": delivery.received_at,
            "processed_at": now,
            "outcome": "rejected",
            "reason": delivery.error,
            "duplicate_of": None,
        }
        if duplicate is not None:
            kind, ref = duplicate
            row.update(outcome="duplicate", reason="already received",
                       duplicate_of=ref if kind == "stored" else ids[ref])
        elif applied is not None:
            row.update(outcome=applied.outcome, reason=applied.reason, customer_id=applied.customer_id,
                       processed_at=now if applied.processed else None)
        return row

    @staticmethod
    def _history_row(applied: _Applied, event: ParsedEvent | None, event_row_id: int, now: datetime
                     ) -> dict[str, Any]:
        decision = applied.decision
        assert decision is not None
        assert event is not None
        assert event.signal is not None
        assert event.signal.trigger is not None
        return {
            "customer_id": applied.customer_id, "from_state": decision.before.state.value,
            "to_state": decision.after.state.value, "trigger": event.signal.trigger.value,
            "source": event.signal.source.value, "event_id": event_row_id,
            "provider_status": event.signal.provider_status, "provider_time": event.signal.provider_time,
            "recorded_at": now, "actor": event.provider, "comment": event.signal.comment,
            "version": decision.after.version,
        }

    # -- after commit -------------------------------------------------------------------------------------

    def _after_commit(self, deliveries: Sequence[Delivery], results: Sequence[IngestResult],
                      changes: list[dict[str, Any]]) -> None:
        if self.metrics is not None:
            counts: dict[tuple[str, str], int] = {}
            for delivery, result in zip(deliveries, results, strict=True):
                key = (delivery.provider, result.outcome)
                counts[key] = counts.get(key, 0) + 1
            for (provider, outcome), count in counts.items():
                self.metrics.observe_webhook(provider, outcome, count)
        self._publish(changes)

    def _publish(self, changes: list[dict[str, Any]]) -> None:
        for change in changes:
            change.pop("_event_index", None)
            if self.metrics is not None:
                self.metrics.observe_transition(change["provider"], change["from"], change["to"],
                                                change["trigger"] or "", change["source"])
        if changes and self.on_change is not None:
            self.on_change(changes)


class GroupCommitter:
    """Feeds deliveries from many request tasks to one writer thread, which commits whatever has queued up
    in one transaction and then answers every waiting request."""

    def __init__(self, ingestor: Ingestor, max_batch: int = 256) -> None:
        self.ingestor = ingestor
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Delivery, asyncio.Future[IngestResult]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tracker-ingest", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    async def submit(self, delivery: Delivery) -> IngestResult:
        if self._thread is None:
            raise RuntimeError("GroupCommitter is not started")
        future: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._queue.put((delivery, future))
        return await future

    def _run(self) -> None:
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
            self._commit(batch)

    def _commit(self, batch: list[tuple[Delivery, asyncio.Future[IngestResult]]]) -> None:
        outcome: list[IngestResult] | BaseException
        try:
            outcome = self.ingestor.ingest([delivery for delivery, _ in batch])
            if self.ingestor.metrics is not None:
                self.ingestor.metrics.ingest_batch.observe(len(batch))
        except Exception as exc:
            if not isinstance(exc, DatabaseUnavailable):
                log.exception("storing a batch of %d deliveries failed", len(batch))
                exc = DatabaseUnavailable("the event could not be stored; retry later")
            outcome = exc
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[IngestResult], Any]]] = {}
        for position, (_, future) in enumerate(batch):
            value = outcome if isinstance(outcome, BaseException) else outcome[position]
            by_loop.setdefault(future.get_loop(), []).append((future, value))
        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
                loop.call_soon_threadsafe(_resolve, pairs)


def _resolve(pairs: list[tuple[asyncio.Future[IngestResult], Any]]) -> None:
    for future, value in pairs:
        if future.done():
            continue
        if isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)

