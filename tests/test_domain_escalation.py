"""Escalation tiers on a fake timeline (pure): 2 h / 5 h, per-provider overrides, Blaaiz business days."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tracker.domain.escalation import EscalationPolicy, Tier, next_deadline, tier_at

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # a Monday
FRIDAY = datetime(2026, 1, 9, 16, 0, tzinfo=UTC)
POLICY = EscalationPolicy(per_provider={"connectfi": (timedelta(hours=3), timedelta(hours=6))})


@pytest.mark.parametrize(("elapsed", "tier"), [
    (timedelta(0), Tier.NONE),
    (timedelta(hours=2) - timedelta(microseconds=1), Tier.NONE),
    (timedelta(hours=2), Tier.OVERDUE),
    (timedelta(hours=5) - timedelta(microseconds=1), Tier.OVERDUE),
    (timedelta(hours=5), Tier.CRITICAL),
    (timedelta(days=3), Tier.CRITICAL),
])
def test_default_tiers_exactly_at_the_thresholds(elapsed: timedelta, tier: Tier) -> None:
    thresholds = POLICY.thresholds("blaaiz", "individual")
    assert tier_at(thresholds, T0, T0 + elapsed) == tier


def test_not_pending_has_no_tier() -> None:
    assert tier_at(POLICY.thresholds("blaaiz", "individual"), None, T0 + timedelta(days=9)) == Tier.NONE
    assert next_deadline(POLICY.thresholds("blaaiz", "individual"), None, Tier.NONE) is None


def test_per_provider_thresholds() -> None:
    thresholds = POLICY.thresholds("connectfi", "individual")
    assert tier_at(thresholds, T0, T0 + timedelta(hours=2, minutes=59)) == Tier.NONE
    assert tier_at(thresholds, T0, T0 + timedelta(hours=3)) == Tier.OVERDUE
    assert next_deadline(thresholds, T0, Tier.OVERDUE) == (Tier.CRITICAL, T0 + timedelta(hours=6))


def test_blaaiz_business_submitted_friday_is_overdue_only_after_five_business_days() -> None:
    thresholds = POLICY.thresholds("blaaiz", "business")
    assert next_deadline(thresholds, FRIDAY, Tier.NONE) == (Tier.OVERDUE, datetime(2026, 1, 16, 16, 0, tzinfo=UTC))
    for hours in (5, 24, 72, 24 * 6):
        assert tier_at(thresholds, FRIDAY, FRIDAY + timedelta(hours=hours)) == Tier.NONE
    assert tier_at(thresholds, FRIDAY, datetime(2026, 1, 16, 15, 59, tzinfo=UTC)) == Tier.NONE
    assert tier_at(thresholds, FRIDAY, datetime(2026, 1, 16, 16, 0, tzinfo=UTC)) == Tier.OVERDUE
    assert next_deadline(thresholds, FRIDAY, Tier.OVERDUE) is None  # no hour-based critical tier for KYB


def test_deadlines_in_order() -> None:
    thresholds = POLICY.thresholds("cryptopocket", "individual")
    assert next_deadline(thresholds, T0, Tier.NONE) == (Tier.OVERDUE, T0 + timedelta(hours=2))
    assert next_deadline(thresholds, T0, Tier.OVERDUE) == (Tier.CRITICAL, T0 + timedelta(hours=5))
    assert next_deadline(thresholds, T0, Tier.CRITICAL) is None
