"""The provider-wide state every worker shares (``provider_state``): which polls a provider admits now (circuit
breaker, Retry-After hold), the pacing cursor that spreads requests evenly within its budget, and what each
answer or failure does to them."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Connection, Engine, Row

from tracker.clock import Clock
from tracker.db import queries
from tracker.db.engine import write_transaction
from tracker.domain.provider_health import (
    Breaker,
    BreakerPolicy,
    breaker_admits,
    breaker_failure,
    breaker_held,
    breaker_success,
    reserve,
)
from tracker.providers.base import Adapter, ProviderError, StatusReport

log = logging.getLogger("tracker.poller")
DEFAULT_HOLD = timedelta(seconds=30)  # a 429 without Retry-After holds the provider this long
RECONCILE_MIN = 10  # due customers at a provider with a list endpoint before a batch reconciliation pays
RECONCILE_CLAIM = 150  # customers one reconciliation settles at most (ten pages)
# How stale the provider's "last poll answered" may be: written at most this often while all is well, so that
# the usual success still writes nothing (see ``result``).
SUCCESS_RESOLUTION = timedelta(seconds=30)


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


class ProviderGate:
    def __init__(self, engine: Engine, clock: Clock, *, lease: timedelta, horizon: timedelta,
                 breaker: BreakerPolicy) -> None:
        self.engine = engine
        self.clock = clock
        self.lease = lease
        self.horizon = horizon
        self.breaker = breaker

    def admit(self, provider: str, plan: ProviderPlan, room: int, owner: str
              ) -> tuple[list[Row[Any]], list[datetime], bool]:
        """Claim due customers and reserve send times: one per customer, or, when many are due at a provider
        with a list endpoint, one for the first page of a batch reconciliation."""
        now = self.clock.now()
        with self.begin() as conn:
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
                                       owner, now + self.lease)
            slots, cursor = reserve(state.next_slot_at, state.blocked_until, now, 1 if batch else len(claims),
                                    plan.gap)
            values: dict[str, Any] = {"breaker_state": breaker.state, "breaker_open_until": breaker.open_until,
                                      "updated_at": now}
            if claims and plan.gap > timedelta(0):
                values["next_slot_at"] = cursor
            queries.update_provider_state(conn, provider, values)
        return claims, slots[:len(claims)], batch

    def reserve(self, provider: str, plan: ProviderPlan, count: int) -> list[datetime]:
        """Send times for ``count`` more requests, within the budget and after any Retry-After hold."""
        now = self.clock.now()
        with self.begin() as conn:
            state = queries.lock_provider_state(conn, provider)
            slots, cursor = reserve(state.next_slot_at, state.blocked_until, now, count, plan.gap)
            if plan.gap > timedelta(0):
                queries.update_provider_state(conn, provider, {"next_slot_at": cursor, "updated_at": now})
        return slots

    def outcome(self, provider: str, error: ProviderError | None) -> None:
        with self.begin() as conn:
            self.result(conn, provider, error, self.clock.now())

    def result(self, conn: Connection, provider: str, error: ProviderError | None, now: datetime) -> None:
        """What an answer (``error`` None) or a failure does to the provider's breaker, hold and last error."""
        if error is None:
            current = queries.provider_state_of(conn, provider)
            if (current is not None and current.breaker_state == "closed" and current.breaker_failures == 0
                    and current.last_success_at is not None and now - current.last_success_at < SUCCESS_RESOLUTION):
                # The usual success changes nothing: do not queue every result of every worker on the one row
                # they share (its lock is held to commit, so it would cap the polls per second of them all).
                return
        state = queries.lock_provider_state(conn, provider)
        breaker = Breaker(state.breaker_state, state.breaker_failures, state.breaker_open_until, state.breaker_opens)
        values: dict[str, Any] = {"updated_at": now}
        if error is None:
            values["last_success_at"] = now
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
            values.update(last_error=describe(error), last_error_at=now)
            if error.retry_after is not None and error.kind != "rate_limited":
                values["blocked_until"] = max(now + timedelta(seconds=error.retry_after), state.blocked_until or now)
        values.update(breaker_state=breaker.state, breaker_failures=breaker.failures,
                      breaker_open_until=breaker.open_until, breaker_opens=breaker.opens)
        queries.update_provider_state(conn, provider, values)

    def begin(self) -> AbstractContextManager[Connection]:
        return write_transaction(self.engine)


def describe(error: ProviderError) -> str:
    """A failure as stored (the provider's last error, a customer's last poll error): kind and message."""
    return f"{error.kind}: {error.message}"[:500]
