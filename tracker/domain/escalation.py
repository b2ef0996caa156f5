"""Escalation tiers of a pending customer (DESIGN.md section 3). Pure: the clock is an argument.

The SLA clock runs only in ``pending``, from ``pending_since`` (the latest entry into ``pending``: a
resubmission is a new attempt with its own tiers). Thresholds depend on the provider and the customer type:
Blaaiz business (KYB) reviews take 1 to 5 business days, so they become ``overdue`` after 5 business days
(weekends skipped) and have no hour-based tiers; everyone else uses the 2 h / 5 h defaults, or the settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from tracker.domain.calendar import add_business_days


class Tier(StrEnum):
    NONE = "none"
    OVERDUE = "overdue"
    CRITICAL = "critical"


@dataclass(frozen=True)
class Threshold:
    """A span after ``pending_since``: a duration, or a number of business days."""

    duration: timedelta | None = None
    business_days: int | None = None

    def due(self, since: datetime) -> datetime:
        if self.business_days is not None:
            return add_business_days(since, self.business_days)
        assert self.duration is not None
        return since + self.duration


@dataclass(frozen=True)
class Thresholds:
    overdue: Threshold | None
    critical: Threshold | None

    def tiers(self) -> list[tuple[Tier, Threshold]]:
        return [(tier, t) for tier, t in ((Tier.OVERDUE, self.overdue), (Tier.CRITICAL, self.critical))
                if t is not None]


@dataclass(frozen=True)
class EscalationPolicy:
    overdue_after: timedelta = timedelta(hours=2)
    critical_after: timedelta = timedelta(hours=5)
    per_provider: Mapping[str, tuple[timedelta, timedelta]] = field(default_factory=dict)
    business_overdue_days: int = 5

    def thresholds(self, provider: str, customer_type: str) -> Thresholds:
        if provider == "blaaiz" and customer_type == "business":
            return Thresholds(Threshold(business_days=self.business_overdue_days), None)
        overdue, critical = self.per_provider.get(provider, (self.overdue_after, self.critical_after))
        return Thresholds(Threshold(overdue), Threshold(critical))


def tier_at(thresholds: Thresholds, since: datetime | None, now: datetime) -> Tier:
    """The tier at ``now`` of a customer pending since ``since`` (None: not pending)."""
    tier = Tier.NONE
    if since is None:
        return tier
    for candidate, threshold in thresholds.tiers():
        if now >= threshold.due(since):
            tier = candidate
    return tier


def next_deadline(thresholds: Thresholds, since: datetime | None, current: Tier) -> tuple[Tier, datetime] | None:
    """The next tier above ``current`` and when it is due, or None when there is none."""
    if since is None:
        return None
    order = [Tier.NONE, Tier.OVERDUE, Tier.CRITICAL]
    for candidate, threshold in thresholds.tiers():
        if order.index(candidate) > order.index(current):
            return candidate, threshold.due(since)
    return None
