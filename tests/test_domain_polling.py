"""Pure polling policy, business days, breaker and pacing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tracker.domain.calendar import add_business_days
from tracker.domain.lifecycle import State
from tracker.domain.polling import PollPolicy, PollSubject, failure_backoff, next_poll
from tracker.domain.provider_health import (
    Breaker,
    BreakerPolicy,
    breaker_admits,
    breaker_failure,
    breaker_held,
    breaker_success,
    reserve,
    spacing,
)

MONDAY = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
FRIDAY = datetime(2026, 1, 9, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(("start", "days", "expected"), [
    (FRIDAY, 5, datetime(2026, 1, 16, 10, 0, tzinfo=UTC)),
    (FRIDAY, 1, datetime(2026, 1, 12, 10, 0, tzinfo=UTC)),
    (MONDAY, 5, datetime(2026, 1, 12, 9, 0, tzinfo=UTC)),
    (datetime(2026, 1, 10, 15, 0, tzinfo=UTC), 1, datetime(2026, 1, 13, 0, 0, tzinfo=UTC)),  # Saturday start
    (MONDAY, 0, MONDAY),
])
def test_business_days(start: datetime, days: int, expected: datetime) -> None:
    assert add_business_days(start, days) == expected


def subject(provider: str = "cryptopocket", state: State = State.PENDING, **kw: object) -> PollSubject:
    values: dict[str, object] = {"customer_type": "individual", "pending_since": MONDAY, "last_signal_at": None,
                                 "last_polled_at": None}
    values.update(kw)
    return PollSubject(provider, state=state, **values)  # type: ignore[arg-type]


POLICY = PollPolicy()


def test_verified_is_never_polled() -> None:
    assert next_poll(subject(state=State.VERIFIED), POLICY, MONDAY) is None


def test_blaaiz_outside_pending_is_not_polled() -> None:
    for state in (State.AWAITING_DOCUMENTS, State.NEEDS_ACTION, State.REJECTED):
        assert next_poll(subject("blaaiz", state), POLICY, MONDAY) is None


def test_self_service_awaiting_is_polled_slowly() -> None:
    assert next_poll(subject(state=State.AWAITING_DOCUMENTS, pending_since=None), POLICY, MONDAY) == MONDAY
    later = next_poll(subject(state=State.AWAITING_DOCUMENTS, last_polled_at=MONDAY), POLICY, MONDAY)
    assert later == MONDAY + timedelta(minutes=15)


def test_blaaiz_pending_waits_for_a_quiet_period() -> None:
    now = MONDAY + timedelta(minutes=3)
    signal = MONDAY + timedelta(minutes=2)
    assert next_poll(subject("blaaiz", last_signal_at=signal), POLICY, now) == signal + timedelta(minutes=10)


def test_blaaiz_business_waits_five_business_days() -> None:
    due = next_poll(subject("blaaiz", customer_type="business", pending_since=FRIDAY), POLICY, FRIDAY)
    assert due == datetime(2026, 1, 16, 10, 0, tzinfo=UTC)


def test_poll_before_threshold() -> None:
    now = MONDAY + timedelta(hours=1, minutes=58)
    due = next_poll(subject(last_polled_at=now), POLICY, now)
    assert due == MONDAY + timedelta(hours=2) - timedelta(minutes=1)
    after_check = MONDAY + timedelta(hours=1, minutes=59)
    assert next_poll(subject(last_polled_at=after_check), POLICY, after_check) == after_check + POLICY.interval


def test_failure_backoff_is_capped_at_the_ceiling() -> None:
    delays = [failure_backoff(n, POLICY, 0.0) for n in range(1, 10)]
    assert delays[0] == timedelta(seconds=30)
    assert delays[1] == timedelta(seconds=60)
    assert max(delays) == POLICY.interval
    assert failure_backoff(3, POLICY, 0.99) < failure_backoff(3, POLICY, 0.0)


def test_breaker_cycle() -> None:
    policy = BreakerPolicy(threshold=3, cooldown=timedelta(seconds=10), max_cooldown=timedelta(seconds=25))
    breaker = Breaker()
    assert breaker_admits(breaker, MONDAY)[0] is None
    for _ in range(3):
        breaker = breaker_failure(breaker, MONDAY, policy)
    assert breaker.state == "open"
    assert breaker_admits(breaker, MONDAY + timedelta(seconds=9))[0] == 0
    allowed, breaker = breaker_admits(breaker, MONDAY + timedelta(seconds=10), timedelta(seconds=60))
    assert (allowed, breaker.state) == (1, "half_open")
    assert breaker_admits(breaker, MONDAY + timedelta(seconds=11))[0] == 0  # one probe at a time
    breaker = breaker_failure(breaker, MONDAY + timedelta(seconds=12), policy)
    assert breaker.state == "open"
    assert breaker.open_until == MONDAY + timedelta(seconds=32)  # cool-down doubled
    assert breaker_success(breaker) == Breaker()


def test_lost_probe_is_replaced_after_its_timeout() -> None:
    breaker = Breaker("half_open", 5, MONDAY + timedelta(seconds=60), 1)
    assert breaker_admits(breaker, MONDAY + timedelta(seconds=59))[0] == 0
    assert breaker_admits(breaker, MONDAY + timedelta(seconds=60))[0] == 1


def test_a_probe_that_meets_retry_after_reopens_until_then() -> None:
    breaker = breaker_held(Breaker("half_open", 5, MONDAY, 1), MONDAY + timedelta(seconds=30))
    assert (breaker.state, breaker.open_until) == ("open", MONDAY + timedelta(seconds=30))


def test_pacing_keeps_within_every_budget() -> None:
    gap = spacing(((120, timedelta(minutes=1)), (1500, timedelta(hours=1))))
    assert gap == timedelta(seconds=2.4) * 1.03  # the hour budget is the stricter
    slots, cursor = reserve(None, None, MONDAY, 3, timedelta(seconds=1))
    assert slots == [MONDAY, MONDAY + timedelta(seconds=1), MONDAY + timedelta(seconds=2)]
    held = MONDAY + timedelta(seconds=30)
    slots, _ = reserve(cursor, held, MONDAY, 1, timedelta(seconds=1))
    assert slots == [held]
