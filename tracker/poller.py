"""Polling: claim due customers, pace requests to each provider's budget, apply what the provider says.

The database decides who polls what: a tick claims due customers with a lease (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL), so any number of workers share the work without polling a customer twice in one interval, and a
killed worker's claims return once their lease expires. Provider-wide state (circuit breaker, Retry-After
hold, the pacing cursor that spreads requests evenly within the budget) lives in ``provider_state``, shared by
every worker. Each result is applied in one transaction with the customer's next due time, so a crash between
the two cannot poll or apply twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Coroutine
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Connection, Engine, Row

from tracker.clock import Clock
from tracker.db import queries
from tracker.db.engine import write_transaction
from tracker.domain.events import MAX_STATUS, unstorable
from tracker.domain.polling import PollPolicy, PollSubject, failure_backoff, next_poll
from tracker.domain.provider_health import (
    SAFETY,
    Breaker,
    BreakerPolicy,
    breaker_admits,
    breaker_failure,
    breaker_held,
    breaker_success,
    reserve,
)
from tracker.metrics import Metrics
from tracker.providers.base import Adapter, CustomerRef, ProviderError, StatusReport
from tracker.transitions.plans import Customer, Rules
from tracker.transitions.plans import plan as plan_change
from tracker.transitions.writes import ConcurrentChange, Writes

log = logging.getLogger("tracker.poller")
DEFAULT_HOLD = timedelta(seconds=30)  # a 429 without Retry-After holds the provider this long
RECONCILE_MIN = 10  # due customers at a provider with a list endpoint before a batch reconciliation pays
RECONCILE_CLAIM = 150  # customers one reconciliation settles at most (ten pages)


@runtime_checkable
class Lister(Protocol):
    """An adapter that can list customers by status, 15 a page (Blaaiz)."""

    in_review_statuses: tuple[str, ...]

    async def list_page(self, verification_status: str, customer_type: str, page: int
                        ) -> tuple[list[StatusReport], bool]: ...


@dataclass(frozen=True)
class ProviderPlan:
    adapter: Adapter
    gap: timedelta = timedelta(0)  # pacing between two requests (0: no budget)
    concurrency: int = 4


class Poller:
    def __init__(self, engine: Engine, clock: Clock, plans: dict[str, ProviderPlan], policy: PollPolicy, *,
                 owner: str, lease: timedelta = timedelta(seconds=60), horizon: timedelta = timedelta(seconds=2),
                 breaker: BreakerPolicy | None = None, metrics: Metrics | None = None,
                 rng: random.Random | None = None, writes: Writes | None = None, rules: Rules | None = None) -> None:
        self.engine = engine
        self.writes = writes or Writes(metrics=metrics)
        self.rules = rules or Rules(polling=policy)
        self.clock = clock
        self.plans = plans
        self.policy = policy
        self.owner = owner
        self.lease = lease
        self.horizon = horizon
        self.breaker = breaker or BreakerPolicy()
        self.metrics = metrics
        self.rng = rng or random.Random()  # noqa: S311 (jitter, not cryptography)
        self._inflight: dict[str, int] = dict.fromkeys(plans, 0)
        self._semaphores = {name: asyncio.Semaphore(plan.concurrency) for name, plan in plans.items()}
        self._tasks: set[asyncio.Task[None]] = set()
        self._cold: set[str] = set(plans)  # providers this worker has not finished a request with yet
        self._sent: dict[str, deque[float]] = {}  # per paced provider: when its last requests left (loop time)
        self._backlog: dict[str, bool] = {}  # per provider without a budget: its last claim filled the room
        self._topping_up: set[str] = set()

    # -- the tick -----------------------------------------------------------------------------------------

    async def tick(self) -> int:
        """Claim and start due polls for every provider; returns how many customers were claimed."""
        started = 0
        for provider, plan in self.plans.items():
            started += await self._start(provider, plan)
        return started

    async def _start(self, provider: str, plan: ProviderPlan) -> int:
        """Claim what there is room for at ``provider`` and start polling it; returns how many were claimed."""
        # Polls in flight include those waiting for their paced slot: leave room for a horizon's worth.
        paced = int(self.horizon / plan.gap) if plan.gap > timedelta(0) else 0
        room = 2 * plan.concurrency + paced - self._inflight[provider]
        if provider in self._cold and plan.gap > timedelta(0):
            # Cold, the first paced requests would all wait for the provider's token (and connection)
            # together, then leave at once, bunched over the budget their slots kept to: the first goes alone.
            room = min(room, 1 - self._inflight[provider])
        if room <= 0:
            return 0
        try:
            rows, slots, batch = await asyncio.to_thread(self._admit, provider, plan, room)
        except Exception:
            log.exception("claiming due %s polls failed", provider)
            return 0
        # A provider without a budget is limited by its concurrency only: while claims fill the room, more are
        # due, and each finished poll claims again (``_top_up``) instead of waiting for the next tick. Claims
        # never queue deeper than twice the concurrency, so they finish well within their lease.
        self._backlog[provider] = plan.gap <= timedelta(0) and not batch and len(rows) >= room
        self._inflight[provider] += len(rows)
        if batch:
            self._spawn(self._reconcile(provider, plan, rows, slots[0]))
        else:
            for row, slot in zip(rows, slots, strict=True):
                self._spawn(self._poll(provider, plan, row, slot))
        return len(rows)

    async def _top_up(self, provider: str) -> None:
        try:
            await self._start(provider, self.plans[provider])
        finally:
            self._topping_up.discard(provider)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for every poll in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _admit(self, provider: str, plan: ProviderPlan, room: int
               ) -> tuple[list[Row[Any]], list[datetime], bool]:
        """Claim due customers and reserve send times: one per customer, or, when many are due at a provider
        with a list endpoint, one for the first page of a batch reconciliation."""
        now = self.clock.now()
        with self._begin() as conn:
            state = queries.lock_provider_state(conn, provider)
            breaker = Breaker(state.breaker_state, state.breaker_failures, state.breaker_open_until,
                              state.breaker_opens)
            allowed, breaker = breaker_admits(breaker, now, self.lease)
            limit = room if allowed is None else min(room, allowed)
            if state.blocked_until is not None and state.blocked_until > now:
                limit = 0
            if plan.gap > timedelta(0):
                ahead = max((state.next_slot_at or now) - now, timedelta(0))
                fits = int((self.horizon - ahead) / plan.gap)
                limit = min(limit, max(fits, 1 if ahead < self.horizon else 0))
            batch = (limit > 0 and allowed is None and isinstance(plan.adapter, Lister)
                     and queries.count_due(conn, provider, now) >= RECONCILE_MIN)
            claims = queries.claim_due(conn, provider, now, RECONCILE_CLAIM if batch else limit,
                                       self.owner, now + self.lease)
            slots, cursor = reserve(state.next_slot_at, state.blocked_until, now, 1 if batch else len(claims),
                                    plan.gap)
            values: dict[str, Any] = {"breaker_state": breaker.state, "breaker_open_until": breaker.open_until,
                                      "updated_at": now}
            if claims and plan.gap > timedelta(0):
                values["next_slot_at"] = cursor
            queries.update_provider_state(conn, provider, values)
        return claims, slots[:len(claims)], batch

    def _reserve(self, provider: str, plan: ProviderPlan, count: int) -> list[datetime]:
        now = self.clock.now()
        with self._begin() as conn:
            state = queries.lock_provider_state(conn, provider)
            slots, cursor = reserve(state.next_slot_at, state.blocked_until, now, count, plan.gap)
            if plan.gap > timedelta(0):
                queries.update_provider_state(conn, provider, {"next_slot_at": cursor, "updated_at": now})
        return slots

    # -- batch reconciliation -----------------------------------------------------------------------------

    async def _reconcile(self, provider: str, plan: ProviderPlan, rows: list[Row[Any]], first: datetime) -> None:
        """Read the provider's lists of customers still in review (15 a call) and settle every claimed customer
        found there; poll the rest one by one."""
        lister = plan.adapter
        assert isinstance(lister, Lister)
        wanted = {row.provider_customer_id for row in rows}
        seen: dict[str, StatusReport] = {}
        pages_left = max(1, len(rows) // 15)
        slot: datetime | None = first
        try:
            for status in lister.in_review_statuses:
                page, more = 1, True
                while more and pages_left > 0 and len(seen) < len(wanted):
                    if slot is None:
                        slot = (await asyncio.to_thread(self._reserve, provider, plan, 1))[0]
                    await self._wait(slot)
                    slot = None
                    async with self._semaphores[provider]:
                        await self._space(provider, plan)
                        reports, more = await lister.list_page(status, "individual", page)
                    pages_left -= 1
                    page += 1
                    seen.update({r.provider_customer_id: r for r in reports if r.provider_customer_id in wanted})
        except ProviderError as exc:
            log.warning("%s list reconciliation stopped: %s (%s)", provider, exc.message, exc.kind)
            await asyncio.to_thread(self._provider_outcome, provider, exc)
        self._cold.discard(provider)
        settled = [row for row in rows if row.provider_customer_id in seen]
        rest = [row for row in rows if row.provider_customer_id not in seen]
        for row in settled:
            try:
                await asyncio.to_thread(self._record_success, provider, row.id, seen[row.provider_customer_id])
            except Exception:
                log.exception("recording a %s list result for customer %s failed", provider, row.id)
            finally:
                self._inflight[provider] -= 1
        if self.metrics is not None and settled:
            self.metrics.polls.labels(provider, "listed").inc(len(settled))
        slots = await asyncio.to_thread(self._reserve, provider, plan, len(rest)) if rest else []
        for row, each in zip(rest, slots, strict=True):
            self._spawn(self._poll(provider, plan, row, each))

    async def _wait(self, slot: datetime) -> None:
        wait = (slot - self.clock.now()).total_seconds()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _space(self, provider: str, plan: ProviderPlan) -> None:
        """Hold a request to a paced provider until it may leave, by when this worker's previous requests really
        left (loop time). The shared slots space requests already, unless some leave late (the event loop or
        the machine stalled, a GC pause, a token renewal): the next ones would then follow closely, and the
        slots keep to the budget within 3 % only, a few tens of milliseconds in a window of a second. So:
        never two requests closer than the budget's own spacing (the gap less its margin: a late request's
        delay is absorbed by the next few instead of carried on by all), and never more than one second's worth
        of requests within that many slots' time (the 3 % margin kept over any second)."""
        if plan.gap <= timedelta(0):
            return
        gap = plan.gap.total_seconds()
        per_second = max(1, round(1 / gap))
        sent = self._sent.setdefault(provider, deque(maxlen=per_second))
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            ready = max(sent[-1] + gap / SAFETY if sent else now,
                        sent[0] + per_second * gap if len(sent) == per_second else now)
            if now >= ready:
                break
            await asyncio.sleep(ready - now)
        sent.append(now)  # no await between the check and this: one event loop

    # -- one poll -----------------------------------------------------------------------------------------

    async def _poll(self, provider: str, plan: ProviderPlan, row: Row[Any], slot: datetime) -> None:
        try:
            await self._wait(slot)
            ref = CustomerRef(row.provider_customer_id, row.customer_type, row.application_id)
            async with self._semaphores[provider]:
                await self._space(provider, plan)
                try:
                    report = await plan.adapter.fetch_status(ref)
                    # report.provider_status is the signal's too (every adapter builds them from one value)
                    problem = unstorable((("status", report.provider_status, MAX_STATUS),
                                          ("comment", report.signal.comment, None)))
                    if problem is not None:  # this customer's answer only: backs off, no breaker
                        raise ProviderError(provider, "invalid", f"the answer cannot be stored: {problem}")
                except ProviderError as exc:
                    await asyncio.to_thread(self._record_failure, provider, row.id, exc)
                    return
                except Exception as exc:  # an adapter bug must not kill the worker
                    log.exception("polling %s customer %s failed unexpectedly", provider, row.id)
                    error = ProviderError(provider, "unexpected", f"{type(exc).__name__}")
                    await asyncio.to_thread(self._record_failure, provider, row.id, error)
                    return
            await asyncio.to_thread(self._record_success, provider, row.id, report)
        except Exception:
            log.exception("recording a %s poll of customer %s failed", provider, row.id)
        finally:
            self._inflight[provider] -= 1
            self._cold.discard(provider)
            if self._backlog.get(provider) and provider not in self._topping_up:
                self._topping_up.add(provider)
                self._spawn(self._top_up(provider))

    def _record_success(self, provider: str, customer_id: int, report: StatusReport) -> None:
        now = self.clock.now()
        changes: list[dict[str, Any]] = []
        with self._begin() as conn:
            row = self._held(conn, customer_id)
            if row is not None:
                planned = plan_change(Customer.of(row._mapping), report.signal, now, self.rules,
                               actor=f"poll:{self.owner}", flags=tuple(report.flags),
                               unknown_status=report.provider_status if report.unknown else None)
                after = planned.after
                subject = PollSubject(provider, row.customer_type, after.snapshot.state, after.snapshot.pending_since,
                                      now, now)
                bookkeeping = {"next_poll_at": anchored(next_poll(subject, self.policy, now), row.next_poll_at, now),
                               "poll_lease_until": None, "poll_lease_owner": None, "poll_failures": 0,
                               "last_polled_at": now, "last_signal_at": now}
                try:
                    changes = self.writes.write(conn, [replace(planned, values={**planned.values, **bookkeeping})],
                                                now)
                except ConcurrentChange:
                    log.info("customer %s changed during its poll; the next poll will see it", customer_id)
                    raise
            self._provider_result(conn, provider, None, now)
        if self.metrics is not None:
            self.metrics.polls.labels(provider, "ok").inc()
        self.writes.published(changes)

    def _record_failure(self, provider: str, customer_id: int, error: ProviderError) -> None:
        now = self.clock.now()
        log.warning("poll of %s customer %s failed: %s (%s)", provider, customer_id, error.message, error.kind)
        with self._begin() as conn:
            row = self._held(conn, customer_id)
            if row is not None:
                failures = row.poll_failures + 1
                delay = failure_backoff(failures, self.policy, self.rng.random())
                queries.update_customers(conn, [{
                    "_id": row.id, "_version": row.version, "poll_failures": failures,
                    "next_poll_at": now + delay, "poll_lease_until": None, "poll_lease_owner": None,
                    "last_polled_at": now,
                }])
            self._provider_result(conn, provider, error, now)
        if self.metrics is not None:
            self.metrics.polls.labels(provider, error.kind).inc()

    def _provider_outcome(self, provider: str, error: ProviderError | None) -> None:
        with self._begin() as conn:
            self._provider_result(conn, provider, error, self.clock.now())

    def _held(self, conn: Connection, customer_id: int) -> Row[Any] | None:
        """The customer row, locked, if this worker still holds its claim."""
        row = queries.lock_customer(conn, customer_id)
        if row is None or row.poll_lease_owner != self.owner:
            log.info("claim on customer %s was lost (lease expired); dropping this result", customer_id)
            return None
        return row

    def _provider_result(self, conn: Connection, provider: str, error: ProviderError | None, now: datetime) -> None:
        if error is None:
            current = queries.provider_state_of(conn, provider)
            if current is not None and current.breaker_state == "closed" and current.breaker_failures == 0:
                # The usual success changes nothing: do not queue every result of every worker on the one row
                # they share (its lock is held to commit, so it would cap the polls per second of them all).
                return
        state = queries.lock_provider_state(conn, provider)
        breaker = Breaker(state.breaker_state, state.breaker_failures, state.breaker_open_until, state.breaker_opens)
        values: dict[str, Any] = {"updated_at": now}
        if error is None:
            breaker = breaker_success(breaker)
        elif error.kind == "rate_limited":
            hold = timedelta(seconds=error.retry_after) if error.retry_after is not None else DEFAULT_HOLD
            until = max(now + hold, state.blocked_until or now)
            values["blocked_until"] = until
            values["next_slot_at"] = max(until, state.next_slot_at or until)
            breaker = breaker_held(breaker, until)
        elif error.retryable or error.kind == "unexpected":
            breaker = breaker_failure(breaker, now, self.breaker)
        if error is not None:
            values["last_error"] = f"{error.kind}: {error.message}"[:500]
            if error.retry_after is not None and error.kind != "rate_limited":
                values["blocked_until"] = max(now + timedelta(seconds=error.retry_after), state.blocked_until or now)
        values.update(breaker_state=breaker.state, breaker_failures=breaker.failures,
                      breaker_open_until=breaker.open_until, breaker_opens=breaker.opens)
        queries.update_provider_state(conn, provider, values)

    def _begin(self) -> AbstractContextManager[Connection]:
        return write_transaction(self.engine)


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
