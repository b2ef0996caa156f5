"""Delivering the outbox: every notice row is claimed with a lease, sent, then marked ``sent``, one at a time per
channel; failures retry with exponential backoff and jitter per channel, and a notice that keeps failing is
marked ``failed`` (visible in ``/v1/alerts`` and ``/metrics``), never dropped. Each channel runs on its own, so
one failing channel never delays the others. A crash between sending and marking leaves the lease to expire and
the notice to go again, with the same idempotency key: at most one duplicate per crash (and channel)."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, Row

from tracker.alerting.base import Channel, DeliveryError, Notice
from tracker.clock import Clock
from tracker.db import alert_queries
from tracker.db.engine import write_transaction
from tracker.metrics import Metrics

log = logging.getLogger("tracker.outbox")


def notice_of(payload: str) -> Notice:
    data = json.loads(payload)
    data["created_at"] = datetime.fromisoformat(data["created_at"])
    return Notice(**data)


class Outbox:
    def __init__(self, engine: Engine, clock: Clock, channels: dict[str, Channel], *, owner: str,
                 lease: timedelta = timedelta(seconds=60), batch: int = 20, max_attempts: int = 12,
                 base_delay: timedelta = timedelta(seconds=5), max_delay: timedelta = timedelta(minutes=10),
                 metrics: Metrics | None = None, rng: random.Random | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.channels = channels
        self.owner = owner
        self.lease = lease
        self.batch = batch
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.metrics = metrics
        self.rng = rng or random.Random()  # noqa: S311 (jitter)
        self._running: dict[str, asyncio.Task[None]] = {}

    async def tick(self) -> None:
        """Start a delivery round for every channel that is not still busy with its last one."""
        for name, channel in self.channels.items():
            running = self._running.get(name)
            if running is not None and not running.done():
                continue
            self._running[name] = asyncio.create_task(self._round(name, channel))

    async def drain(self) -> None:
        while any(not task.done() for task in self._running.values()):
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _round(self, name: str, channel: Channel) -> None:
        """Up to ``batch`` due notices, one at a time: each is claimed just before it is sent and marked just
        after, so a crash leaves at most one notice per channel sent but unmarked (at most one duplicate per
        crash), and a lease only has to outlast one send."""
        try:
            for _ in range(self.batch):
                rows = await asyncio.to_thread(self._claim, name, 1)
                if not rows:
                    break
                await self._deliver(name, channel, rows[0])
        except Exception:
            log.exception("delivery round for %s failed", name)

    def _begin(self) -> AbstractContextManager[Connection]:
        return write_transaction(self.engine)

    def _claim(self, channel: str, limit: int) -> list[Row[Any]]:
        now = self.clock.now()
        with self._begin() as conn:
            return alert_queries.claim_notifications(conn, channel, now, limit, self.owner, now + self.lease)

    async def _deliver(self, name: str, channel: Channel, row: Row[Any]) -> None:
        try:
            await channel.send(notice_of(row.payload))
        except DeliveryError as exc:
            await asyncio.to_thread(self._failed, name, row, exc)
            return
        except Exception as exc:  # a channel bug: treat as a retryable failure, keep the notice
            log.exception("channel %s raised unexpectedly", name)
            await asyncio.to_thread(self._failed, name, row, DeliveryError(f"{name}: {type(exc).__name__}"))
            return
        await asyncio.to_thread(self._sent, name, row)

    def _sent(self, name: str, row: Row[Any]) -> None:
        now = self.clock.now()
        with self._begin() as conn:
            alert_queries.finish_notification(conn, row.id, self.owner, {
                "state": "sent", "sent_at": now, "attempts": row.attempts + 1, "lease_until": None,
                "lease_owner": None, "last_error": None})
        if self.metrics is not None:
            self.metrics.notifications.labels(name, "sent").inc()

    def _failed(self, name: str, row: Row[Any], error: DeliveryError) -> None:
        now = self.clock.now()
        attempts = row.attempts + 1
        values: dict[str, Any] = {"attempts": attempts, "lease_until": None, "lease_owner": None,
                                  "last_error": error.message[:500]}
        if not error.retryable or attempts >= self.max_attempts:
            values["state"] = "failed"
            log.error("notice %s to %s failed for good after %d attempt(s): %s", row.key, name, attempts,
                      error.message)
        else:
            values["next_attempt_at"] = now + self.backoff(attempts, error.retry_after)
            log.warning("notice %s to %s failed (attempt %d), retrying: %s", row.key, name, attempts, error.message)
        with self._begin() as conn:
            alert_queries.finish_notification(conn, row.id, self.owner, values)
        if self.metrics is not None:
            self.metrics.notifications.labels(name, values.get("state", "retry")).inc()

    def backoff(self, attempts: int, retry_after: float | None) -> timedelta:
        delay = min(self.base_delay * (1 << min(attempts - 1, 20)), self.max_delay)
        delay = delay * (0.5 + self.rng.random() / 2)  # jitter: between half and the whole delay
        if retry_after is not None:
            delay = max(delay, timedelta(seconds=retry_after))
        return delay
