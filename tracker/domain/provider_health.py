"""Per-provider health: a circuit breaker and request pacing. Pure: state in, state out.

Breaker: ``closed`` until ``threshold`` consecutive failures, then ``open`` (no requests) for a cool-down that
doubles with each re-opening up to ``max_cooldown``; after it, ``half_open`` lets one probe through: success
closes it, failure opens it again.

Pacing: requests are spaced evenly at the provider's most restrictive budget (for Blaaiz, 1,500 an hour is
stricter than 120 a minute), a little under it, so that no window of any budget ever sees more than allowed,
even when a request leaves a few milliseconds late. ``blocked_until`` (a Retry-After) holds every request.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

SAFETY = 1.03  # space requests 3 % wider than the budget allows


@dataclass(frozen=True)
class Breaker:
    state: str = "closed"  # closed | open | half_open
    failures: int = 0
    open_until: datetime | None = None
    opens: int = 0


@dataclass(frozen=True)
class BreakerPolicy:
    threshold: int = 5
    cooldown: timedelta = timedelta(seconds=15)
    max_cooldown: timedelta = timedelta(minutes=5)


def breaker_admits(breaker: Breaker, now: datetime, probe_timeout: timedelta = timedelta(seconds=60)
                   ) -> tuple[int | None, Breaker]:
    """How many requests may start now (None: no limit from the breaker), and the breaker after asking.

    Half open lets one probe through; if its answer never comes (the worker died), another probe goes after
    ``probe_timeout``."""
    if breaker.state == "closed":
        return None, breaker
    if breaker.open_until is not None and now < breaker.open_until:
        return 0, breaker
    return 1, replace(breaker, state="half_open", open_until=now + probe_timeout)


def breaker_held(breaker: Breaker, until: datetime) -> Breaker:
    """The provider asked us to wait (429 with Retry-After): a probe that met it proves nothing either way."""
    if breaker.state == "half_open":
        return replace(breaker, state="open", open_until=until)
    return breaker


def breaker_success(breaker: Breaker) -> Breaker:
    return Breaker()


def breaker_failure(breaker: Breaker, now: datetime, policy: BreakerPolicy) -> Breaker:
    failures = breaker.failures + 1
    if breaker.state == "half_open" or failures >= policy.threshold:
        cooldown = min(policy.cooldown * (1 << min(breaker.opens, 16)), policy.max_cooldown)
        return Breaker("open", failures, now + cooldown, breaker.opens + 1)
    return replace(breaker, failures=failures)


def spacing(limits: tuple[tuple[int, timedelta], ...]) -> timedelta:
    """The gap between two requests that keeps within every (count, window) budget."""
    if not limits:
        return timedelta(0)
    return max(window / count for count, window in limits) * SAFETY


def reserve(next_slot: datetime | None, blocked_until: datetime | None, now: datetime, count: int,
            gap: timedelta) -> tuple[list[datetime], datetime]:
    """``count`` send times from the shared pacing cursor, and the cursor after them."""
    start = max(filter(None, (next_slot, blocked_until, now)))
    slots = [start + gap * i for i in range(count)]
    return slots, start + gap * count
