"""transitions.plans without a database: what a signal plans, and when readers' ETags must move."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tracker.domain.escalation import EscalationPolicy
from tracker.domain.lifecycle import Signal, Snapshot, Source, State, Trigger
from tracker.domain.polling import PollPolicy
from tracker.transitions.plans import Customer, Rules, plan

NOW = datetime(2026, 1, 5, 12, tzinfo=UTC)
RULES = Rules(escalation=EscalationPolicy(), polling=PollPolicy())


def pending(**fields: object) -> Customer:
    snapshot = Snapshot(state=State.PENDING, version=4, pending_since=NOW - timedelta(hours=1), attempts=1,
                        provider_status="PROCESSING", last_provider_time=NOW - timedelta(hours=1))
    return Customer(7, "blaaiz", "cus_7", "individual", snapshot, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(("status", "flags", "version", "writes_updated_at"), [
    ("PROCESSING", (), 4, False),  # only the provider's clock is new: stored, no new version
    ("PROCESSING", ("unknown_status:ON_HOLD",), 5, True),  # a new flag is seen: new version
    ("ON_HOLD", (), 5, True),  # a new raw status is seen: new version
])
def test_the_version_moves_with_what_readers_see(status, flags, version, writes_updated_at) -> None:
    planned = plan(pending(), Signal(None, Source.WEBHOOK, status, NOW), NOW, RULES, actor="blaaiz", flags=flags)
    assert planned.values["last_provider_time"] == NOW
    assert planned.after.snapshot.version == version
    assert planned.values.get("version", 4) == version
    assert ("updated_at" in planned.values) is writes_updated_at
    assert planned.history is None
    assert planned.change is None


def test_a_move_plans_its_history_deadline_poll_and_alert_resolution() -> None:
    escalated = pending(tier="overdue")
    planned = plan(escalated, Signal(Trigger.PROVIDER_APPROVED, Source.WEBHOOK, "VERIFIED", NOW), NOW, RULES,
                   actor="blaaiz", event_id=42)
    assert planned.outcome == "applied"
    assert planned.values["tier"] == "none"
    assert (planned.values["deadline_at"], planned.values["deadline_tier"]) == (None, None)
    assert planned.values["next_poll_at"] is None  # verified is never polled
    assert planned.values["last_signal_at"] == NOW
    assert planned.resolve_tier_alerts
    assert planned.history is not None
    assert planned.history["event_id"] == 42
    assert planned.change == {"customer_id": 7, "provider": "blaaiz", "from": "pending", "to": "verified",
                              "trigger": "provider_approved", "source": "webhook", "version": 5, "event_id": 42}


def test_a_contradiction_of_a_verified_customer_plans_one_alert_per_cause() -> None:
    verified = Customer(7, "blaaiz", "cus_7", "individual", Snapshot(state=State.VERIFIED, version=3))
    signal = Signal(Trigger.PROVIDER_REJECTED, Source.WEBHOOK, "REJECTED", NOW)
    first = plan(verified, signal, NOW, RULES, actor="blaaiz", cause="event:a")
    again = plan(verified, signal, NOW, RULES, actor="blaaiz", cause="event:a")
    other = plan(verified, signal, NOW, RULES, actor="blaaiz", cause="event:b")
    assert first.outcome == "conflict"
    assert first.values == {"last_signal_at": NOW}  # heard from, moved nothing
    assert [a.key for a in first.alerts] == [a.key for a in again.alerts] != [a.key for a in other.alerts]


@pytest.mark.parametrize(("ahead", "flagged"), [
    (timedelta(minutes=5), False),  # exactly the allowed skew: trusted
    (timedelta(minutes=5, seconds=1), True),
    (timedelta(days=3000 * 365), True),
])
def test_a_provider_time_beyond_the_skew_is_ordered_by_its_receipt(ahead, flagged) -> None:
    """Whatever the source (here a poll), the plan bounds the provider's clock by the receipt time plus
    ``Rules.clock_skew``; the history row keeps the time as sent."""
    received = NOW - timedelta(seconds=10)  # stored, then applied a little later
    sent = received + ahead
    planned = plan(pending(), Signal(Trigger.PROVIDER_REJECTED, Source.POLL, "REJECTED", sent), NOW, RULES,
                   actor="poll", received_at=received)
    assert planned.outcome == "applied"
    assert planned.values["last_provider_time"] == (received if flagged else sent)
    assert ("future_provider_time" in planned.after.flags) is flagged
    assert ("future_provider_time" in planned.reason) is flagged
    assert planned.history is not None
    assert planned.history["provider_time"] == sent
