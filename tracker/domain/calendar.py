"""Business days: weekends skipped (Saturday and Sunday), in UTC. Pure."""

from __future__ import annotations

from datetime import datetime, timedelta


def add_business_days(start: datetime, days: int) -> datetime:
    """The moment ``days`` whole business days after ``start``.

    Time spent on a weekend does not count: a start on Saturday counts from Monday 00:00. Friday 10:00 plus
    5 business days is the next Friday 10:00.
    """
    if days < 0:
        raise ValueError("days must not be negative")
    current = start
    if current.weekday() >= 5:  # move a weekend start to Monday 00:00
        current = (current + timedelta(days=7 - current.weekday())).replace(hour=0, minute=0, second=0,
                                                                            microsecond=0)
    remaining = days
    while remaining:
        current += timedelta(days=1)
        if current.weekday() < 5:
            remaining -= 1
    return current
