"""When to poll a customer next. Pure: every input is a value, including ``now``.

- Pending customers of a provider that must be polled: soon after submission, then backing off (a quarter of
  the time pending so far) up to the ceiling ``interval``; one poll right before each escalation threshold.
- Pending customers of a provider that pushes webhooks (Blaaiz): polled only once no signal has come for
  ``reconcile_after``, then at the ceiling. Blaaiz business customers: never inside their 1 to 5 business-day
  review window (the poll waits for its end).
- Customers whose submission happens on the provider's own page (CryptoPocket, connectFi journeys) are polled
  in ``awaiting_documents`` / ``needs_action`` / ``rejected`` too, at the slower ``awaiting_interval``.
- ``verified`` is final: never polled. Failures back off exponentially, never past the ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from tracker.domain.calendar import add_business_days
from tracker.domain.lifecycle import State

PUSHING_PROVIDERS = frozenset({"blaaiz"})
SELF_SERVICE_PROVIDERS = frozenset({"connectfi", "cryptopocket"})
FIRST_POLL_AFTER = timedelta(seconds=30)


@dataclass(frozen=True)
class PollPolicy:
    interval: timedelta = timedelta(minutes=5)  # the ceiling for pending customers
    awaiting_interval: timedelta = timedelta(minutes=15)
    reconcile_after: timedelta = timedelta(minutes=10)
    thresholds: tuple[timedelta, ...] = (timedelta(hours=2), timedelta(hours=5))
    threshold_lead: timedelta = timedelta(seconds=60)  # how long before a threshold the extra poll happens
    business_review_days: int = 5

    def floor(self) -> timedelta:
        return min(FIRST_POLL_AFTER, self.interval)


@dataclass(frozen=True)
class PollSubject:
    provider: str
    customer_type: str
    state: State
    pending_since: datetime | None
    last_signal_at: datetime | None  # the last webhook or poll answer about this customer
    last_polled_at: datetime | None


def next_poll(subject: PollSubject, policy: PollPolicy, now: datetime) -> datetime | None:
    """The next time to poll, or None for never (until something changes)."""
    if subject.state is State.VERIFIED:
        return None
    if subject.state is not State.PENDING:
        if subject.provider in SELF_SERVICE_PROVIDERS:
            base = subject.last_polled_at or now
            return max(base + policy.awaiting_interval, now) if subject.last_polled_at else now
        return None
    since = subject.pending_since or now
    if subject.provider == "blaaiz" and subject.customer_type == "business":
        window_end = add_business_days(since, policy.business_review_days)
        return max(window_end, _after_last(subject, policy.interval, now))
    if subject.provider in PUSHING_PROVIDERS:
        quiet_since = max(filter(None, (since, subject.last_signal_at)))
        candidate = max(quiet_since + policy.reconcile_after, _after_last(subject, policy.interval, now))
    else:
        age = max(now - since, timedelta(0))
        delay = min(policy.interval, max(policy.floor(), age / 4))
        candidate = (subject.last_polled_at + delay) if subject.last_polled_at else since + policy.floor()
    return _before_threshold(candidate, since, subject, policy, now)


def _after_last(subject: PollSubject, interval: timedelta, now: datetime) -> datetime:
    return subject.last_polled_at + interval if subject.last_polled_at else now


def _before_threshold(candidate: datetime, since: datetime, subject: PollSubject, policy: PollPolicy,
                      now: datetime) -> datetime:
    """Pull the poll forward to just before the next threshold it would otherwise skip past."""
    lead = min(policy.threshold_lead, policy.interval / 2)
    for threshold in policy.thresholds:
        check_at = since + threshold - lead
        already = subject.last_polled_at is not None and subject.last_polled_at >= check_at
        if not already and now <= since + threshold and candidate > check_at:
            return max(check_at, now)
    return candidate


def failure_backoff(failures: int, policy: PollPolicy, jitter: float) -> timedelta:
    """Delay after ``failures`` consecutive failed polls of one customer: 2^n x floor, capped at the ceiling.
    ``jitter`` in [0, 1) spreads retries by up to a fifth of the delay."""
    base = policy.floor() * (1 << min(max(failures - 1, 0), 16))
    delay: timedelta = min(base, policy.interval)
    return delay * (1 - 0.2 * jitter)
