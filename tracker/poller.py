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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row

from tracker.clock import Clock
from tracker.db import queries
from tracker.domain.events import MAX_STATUS, unstorable
from tracker.domain.polling import PollPolicy
from tracker.domain.provider_health import SAFETY, BreakerPolicy
from tracker.errors import Conflict, NotFound, TrackerError
from tracker.metrics import Metrics
from tracker.poll_results import PollResults, anchored
from tracker.provider_gate import Lister, ProviderGate, ProviderPlan, describe
from tracker.providers.base import CustomerRef, ProviderError, StatusReport
from tracker.transitions.plans import Rules
from tracker.transitions.writes import Writes

__all__ = ["PollNow", "Poller", "ProviderPlan", "anchored"]
log = logging.getLogger("tracker.poller")
NOW_WAIT = timedelta(seconds=10)  # how long a poll asked for by a person may wait for its provider's slot


@dataclass(frozen=True)
class PollNow:
    """What a poll asked for by a person found: ``changed`` (the state moved), ``unchanged`` or ``failed``."""

    outcome: str
    provider_status: str | None = None
    error: str | None = None


class Poller:
    def __init__(self, engine: Engine, clock: Clock, plans: dict[str, ProviderPlan], policy: PollPolicy, *,
                 owner: str, lease: timedelta = timedelta(seconds=60), horizon: timedelta = timedelta(seconds=2),
                 breaker: BreakerPolicy | None = None, metrics: Metrics | None = None,
                 rng: random.Random | None = None, writes: Writes | None = None, rules: Rules | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.plans = plans
        self.owner = owner
        self.lease = lease
        self.horizon = horizon
        self.metrics = metrics
        self.gate = ProviderGate(engine, clock, lease=lease, horizon=horizon, breaker=breaker or BreakerPolicy())
        self.results = PollResults(self.gate, clock, policy, rules or Rules(polling=policy),
                                   writes or Writes(metrics=metrics), owner=owner, metrics=metrics,
                                   rng=rng or random.Random())  # noqa: S311 (jitter, not cryptography)
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
            rows, slots, batch = await asyncio.to_thread(self.gate.admit, provider, plan, room, self.owner)
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
                        slot = (await asyncio.to_thread(self.gate.reserve, provider, plan, 1))[0]
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
            await asyncio.to_thread(self.gate.outcome, provider, exc)
        self._cold.discard(provider)
        settled = [row for row in rows if row.provider_customer_id in seen]
        rest = [row for row in rows if row.provider_customer_id not in seen]
        for row in settled:
            try:
                await asyncio.to_thread(self.results.success, provider, row.id, seen[row.provider_customer_id])
            except Exception:
                log.exception("recording a %s list result for customer %s failed", provider, row.id)
            finally:
                self._inflight[provider] -= 1
        if self.metrics is not None and settled:
            self.metrics.polls.labels(provider, "listed").inc(len(settled))
        slots = await asyncio.to_thread(self.gate.reserve, provider, plan, len(rest)) if rest else []
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
            answer = await self._ask(provider, plan, row)
            if isinstance(answer, ProviderError):
                await asyncio.to_thread(self.results.failure, provider, row.id, answer)
            else:
                await asyncio.to_thread(self.results.success, provider, row.id, answer)
        except Exception:
            log.exception("recording a %s poll of customer %s failed", provider, row.id)
        finally:
            self._inflight[provider] -= 1
            self._cold.discard(provider)
            if self._backlog.get(provider) and provider not in self._topping_up:
                self._topping_up.add(provider)
                self._spawn(self._top_up(provider))

    async def _ask(self, provider: str, plan: ProviderPlan, row: Row[Any]) -> StatusReport | ProviderError:
        """One status request, within the provider's concurrency and spacing: its report, or why there is none."""
        ref = CustomerRef(row.provider_customer_id, row.customer_type, row.application_id)
        async with self._semaphores[provider]:
            await self._space(provider, plan)
            try:
                report = await plan.adapter.fetch_status(ref)
            except ProviderError as exc:
                return exc
            except Exception as exc:  # an adapter bug must not kill the worker
                log.exception("polling %s customer %s failed unexpectedly", provider, row.id)
                return ProviderError(provider, "unexpected", f"{type(exc).__name__}")
        # report.provider_status is the signal's too (every adapter builds them from one value)
        problem = unstorable((("status", report.provider_status, MAX_STATUS), ("comment", report.signal.comment, None)))
        if problem is not None:  # this customer's answer only: backs off, no breaker
            return ProviderError(provider, "invalid", f"the answer cannot be stored: {problem}")
        return report

    # -- a poll asked for by a person -----------------------------------------------------------------------

    async def poll_now(self, customer_id: int, actor: str) -> PollNow:
        """Poll one customer at once (the operator's ``poll``), in turn with the scheduled polls: it claims the
        customer as a tick would, keeps to the provider's budget and Retry-After hold, and its answer is applied
        by the same code, with ``actor`` on any move it makes."""
        row = await asyncio.to_thread(self._claim_one, customer_id)
        provider = row.provider
        plan = self.plans[provider]
        slot = (await asyncio.to_thread(self.gate.reserve, provider, plan, 1))[0]
        if slot - self.clock.now() > NOW_WAIT:
            await asyncio.to_thread(self.results.release, customer_id)
            raise TrackerError(f"{provider} asked not to be called before {slot.isoformat()}; try again then",
                               code="provider_busy", status=503)
        try:
            await self._wait(slot)
            answer = await self._ask(provider, plan, row)
        except BaseException:
            await asyncio.to_thread(self.results.release, customer_id)
            raise
        if isinstance(answer, ProviderError):
            await asyncio.to_thread(self.results.failure, provider, customer_id, answer)
            return PollNow("failed", error=describe(answer))
        changes = await asyncio.to_thread(self.results.success, provider, customer_id, answer, actor)
        return PollNow("changed" if changes else "unchanged", provider_status=answer.provider_status)

    def _claim_one(self, customer_id: int) -> Row[Any]:
        now = self.clock.now()
        with self.gate.begin() as conn:
            row = queries.get_customer(conn, customer_id)
            if row is None:
                raise NotFound(f"no customer with id {customer_id}")
            if row.provider not in self.plans:
                raise Conflict(f"{row.provider} is not polled by this tracker (its credentials are not set)",
                               code="provider_not_polled")
            claimed = queries.claim_customer(conn, customer_id, now, self.owner, now + self.lease)
            if claimed is None:
                raise Conflict(f"customer {customer_id} is being polled right now; its result will show shortly",
                               code="poll_in_progress")
            return claimed
