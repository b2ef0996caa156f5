"""Escalation on a fake clock: tiers exactly at 2 h / 5 h, once, resolved when decided, business days, repeats,
incidents, check before alert, acknowledgement."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from tests.conftest import AppliedTransport, close, make_settings
from tracker.bootstrap import Container, build
from tracker.clock import FakeClock
from tracker.db import queries
from tracker.db.tables import alerts, customers, inbound_events, notifications
from tracker.escalation import SETTLE_CHUNK
from tracker.providers.simulators import BlaaizSimulator, CryptoPocketSimulator, HostRouter
from tracker.web.app import create_app


@pytest.fixture
def pocket(clock: FakeClock) -> CryptoPocketSimulator:
    return CryptoPocketSimulator(clock=clock)


def settings_for(database_url: str, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "cryptopocket_base_url": CryptoPocketSimulator.api_base_url, "cryptopocket_api_key": "sim-cryptopocket-key",
        "cryptopocket_api_secret": "sim-cryptopocket-secret", "rate_limits": {},
        "poll_interval": timedelta(hours=24), "awaiting_poll_interval": timedelta(hours=24),
        "critical_repeat": timedelta(hours=1)}
    values.update(overrides)
    return make_settings(database_url, **values)


@pytest.fixture
async def app(database_url: str, clock: FakeClock, pocket: CryptoPocketSimulator) -> AsyncIterator[Container]:
    container = build(settings_for(database_url), clock, transport=HostRouter.of(pocket))
    container.start()
    yield container
    await close(container)


async def make_pending(app: Container, pocket: CryptoPocketSimulator, user: str) -> int:
    """A CryptoPocket customer whose review starts now (seen by a poll)."""
    pocket.add_customer(user, "processing")
    cid = int(app.customers.register({"provider": "cryptopocket", "provider_customer_id": user,
                                      "customer_type": "individual"}).row.id)
    await app.poller.tick()
    await app.poller.drain()
    assert customer(app, cid).state == "pending"
    return cid


def customer(app: Container, cid: int) -> Any:
    with app.engine.connect() as conn:
        return queries.get_customer(conn, cid)


def alert_rows(app: Container, cid: int | None = None) -> list[Any]:
    with app.engine.connect() as conn:
        query = select(alerts).order_by(alerts.c.id)
        if cid is not None:
            query = query.where(alerts.c.customer_id == cid)
        return list(conn.execute(query))


def notices(app: Container) -> list[Any]:
    with app.engine.connect() as conn:
        return list(conn.execute(select(notifications).order_by(notifications.c.id)))


async def sweep(app: Container) -> None:
    await app.escalator.tick()


async def run_until(app: Container, clock: FakeClock, until: datetime, step: timedelta = timedelta(seconds=1)) -> None:
    while clock.now() < until:
        clock.advance(step)
        await sweep(app)


async def test_overdue_at_exactly_2h_and_critical_at_5h_not_a_tick_before(app, clock, pocket) -> None:
    cid = await make_pending(app, pocket, "usr_1")
    t0 = customer(app, cid).pending_since
    clock.set(t0 + timedelta(hours=2) - timedelta(seconds=1))
    await sweep(app)
    assert alert_rows(app, cid) == []
    assert customer(app, cid).tier == "none"
    clock.set(t0 + timedelta(hours=2))
    await sweep(app)
    assert [(a.kind, a.state) for a in alert_rows(app, cid)] == [("overdue", "open")]
    assert customer(app, cid).tier == "overdue"
    clock.set(t0 + timedelta(hours=5) - timedelta(seconds=1))
    await sweep(app)
    assert len(alert_rows(app, cid)) == 1
    clock.set(t0 + timedelta(hours=5))
    await sweep(app)
    assert [a.kind for a in alert_rows(app, cid)] == ["overdue", "critical"]
    assert customer(app, cid).tier == "critical"
    assert customer(app, cid).deadline_at is None  # nothing further to cross
    for _ in range(100):  # extra sweeps change nothing
        await sweep(app)
    assert len(alert_rows(app, cid)) == 2
    assert [n.action for n in notices(app)] == ["trigger", "trigger"]


async def test_the_check_before_alert_finds_it_decided(app, clock, pocket) -> None:
    cid = await make_pending(app, pocket, "usr_2")
    pocket.set_status("usr_2", "valid")
    clock.set(customer(app, cid).pending_since + timedelta(hours=2))
    await sweep(app)
    assert customer(app, cid).state == "verified"
    assert alert_rows(app, cid) == []


async def test_decided_at_1h59_gets_nothing(app, clock, pocket, database_url) -> None:
    cid = await make_pending(app, pocket, "usr_3")
    t0 = customer(app, cid).pending_since
    clock.set(t0 + timedelta(hours=1, minutes=59))
    pocket.set_status("usr_3", "fail")
    with app.engine.begin() as conn:
        conn.execute(customers.update().where(customers.c.id == cid).values(next_poll_at=clock.now()))
    await app.poller.tick()
    await app.poller.drain()
    assert customer(app, cid).state == "rejected"
    await run_until(app, clock, t0 + timedelta(hours=6), step=timedelta(minutes=7))
    assert alert_rows(app, cid) == []
    assert notices(app) == []


async def test_decided_at_3h_gets_overdue_then_a_resolve(app, clock, pocket) -> None:
    cid = await make_pending(app, pocket, "usr_4")
    t0 = customer(app, cid).pending_since
    clock.set(t0 + timedelta(hours=2))
    await sweep(app)
    clock.set(t0 + timedelta(hours=3))
    pocket.set_status("usr_4", "valid")
    with app.engine.begin() as conn:
        conn.execute(customers.update().where(customers.c.id == cid).values(next_poll_at=clock.now()))
    await app.poller.tick()
    await app.poller.drain()
    rows = alert_rows(app, cid)
    assert [(a.kind, a.state) for a in rows] == [("overdue", "resolved")]
    assert [n.action for n in notices(app)] == ["trigger", "resolve"]
    assert customer(app, cid).tier == "none"
    await run_until(app, clock, t0 + timedelta(hours=6), step=timedelta(minutes=10))
    assert len(alert_rows(app, cid)) == 1


async def test_resubmission_after_rejection_gets_its_own_alerts(app, clock, pocket) -> None:
    cid = await make_pending(app, pocket, "usr_5")
    t0 = customer(app, cid).pending_since
    clock.set(t0 + timedelta(hours=2))
    await sweep(app)
    pocket.set_status("usr_5", "fail")
    with app.engine.begin() as conn:
        conn.execute(customers.update().where(customers.c.id == cid).values(next_poll_at=clock.now()))
    await app.poller.tick()
    await app.poller.drain()
    clock.advance(timedelta(minutes=30))
    pocket.set_status("usr_5", "processing")
    with app.engine.begin() as conn:
        conn.execute(customers.update().where(customers.c.id == cid).values(next_poll_at=clock.now()))
    await app.poller.tick()
    await app.poller.drain()
    t1 = customer(app, cid).pending_since
    assert t1 == clock.now()
    clock.set(t1 + timedelta(hours=2))
    await sweep(app)
    rows = alert_rows(app, cid)
    assert [(a.kind, a.attempt, a.state) for a in rows] == [("overdue", 1, "resolved"), ("overdue", 2, "open")]


async def test_blaaiz_business_submitted_on_friday(database_url) -> None:
    friday = datetime(2026, 1, 9, 16, 0, tzinfo=UTC)
    clock = FakeClock(friday)
    sim = BlaaizSimulator(clock=clock)
    container = build(make_settings(database_url), clock, transport=HostRouter.of(sim))
    try:
        cid = int(container.customers.register({"provider": "blaaiz", "provider_customer_id": "biz_1",
                                                "customer_type": "business"}).row.id)
        container.customers.submit(cid)
        await run_until(container, clock, datetime(2026, 1, 16, 15, 30, tzinfo=UTC), step=timedelta(minutes=30))
        clock.set(datetime(2026, 1, 16, 15, 59, 59, tzinfo=UTC))
        await sweep(container)
        assert alert_rows(container, cid) == []
        clock.set(datetime(2026, 1, 16, 16, 0, tzinfo=UTC))
        await sweep(container)
        assert [a.kind for a in alert_rows(container, cid)] == ["overdue"]
        assert "5 business days" in (alert_rows(container, cid)[0].detail or "")
        await run_until(container, clock, datetime(2026, 1, 20, tzinfo=UTC), step=timedelta(hours=3))
        assert len(alert_rows(container, cid)) == 1  # no hour-based critical tier for KYB
    finally:
        await container.http.aclose()
        container.engine.dispose()


async def test_downtime_raises_every_missed_threshold_once(app, clock, pocket) -> None:
    cid = await make_pending(app, pocket, "usr_6")
    pocket.set_status("usr_6", "processing")
    clock.advance(timedelta(hours=7))  # the worker was down across both thresholds
    await sweep(app)
    assert [a.kind for a in alert_rows(app, cid)] == ["overdue", "critical"]
    await sweep(app)
    assert len(alert_rows(app, cid)) == 2


async def test_critical_repeats_until_acknowledged(app, clock, pocket, database_url) -> None:
    cid = await make_pending(app, pocket, "usr_7")
    t0 = customer(app, cid).pending_since
    clock.set(t0 + timedelta(hours=5))
    await sweep(app)
    critical = next(a for a in alert_rows(app, cid) if a.kind == "critical")
    clock.advance(timedelta(minutes=59))
    await sweep(app)
    assert [n.action for n in notices(app)].count("repeat") == 0
    clock.advance(timedelta(minutes=1))
    await sweep(app)
    assert [n.action for n in notices(app)].count("repeat") == 1
    key = app.api_keys.create("ops", "admin")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(app)), base_url="http://t") as http:
        response = await http.post(f"/v1/alerts/{critical.id}/acknowledge", headers={"authorization": f"Bearer {key}"})
        assert response.status_code == 200
        assert response.json()["state"] == "acknowledged"
        assert response.json()["acknowledged_by"] == "ops"
        listed = await http.get("/v1/alerts?state=acknowledged", headers={"authorization": f"Bearer {key}"})
        assert [a["id"] for a in listed.json()["items"]] == [critical.id]
        bad = await http.get("/v1/alerts?state=closed", headers={"authorization": f"Bearer {key}"})
        assert bad.status_code == 400
        missing = await http.post("/v1/alerts/999/acknowledge", headers={"authorization": f"Bearer {key}"})
        assert missing.status_code == 404
    clock.advance(timedelta(hours=3))
    await sweep(app)
    assert [n.action for n in notices(app)].count("repeat") == 1


async def test_many_crossings_fold_into_one_provider_incident(database_url, clock, pocket) -> None:
    container = build(settings_for(database_url, incident_threshold=5, incident_window=timedelta(minutes=10)),
                      clock, transport=HostRouter.of(pocket))
    try:
        ids = [await make_pending(container, pocket, f"usr_i{n}") for n in range(12)]
        clock.advance(timedelta(hours=2))
        await sweep(container)
        rows = alert_rows(container)
        incidents = [a for a in rows if a.kind == "incident"]
        assert len(incidents) == 1
        overdue = [a for a in rows if a.kind == "overdue"]
        assert len(overdue) == 12
        assert all(a.incident_id == incidents[0].id for a in overdue)
        triggers = [n for n in notices(container) if n.action == "trigger"]
        assert len(triggers) == 5  # four customers alone, then the incident; the rest fold into it
        assert ids
    finally:
        await container.http.aclose()
        container.engine.dispose()


async def test_webhooks_drive_deadlines_resolution_and_conflicts(database_url, clock) -> None:
    from tests.conftest import blaaiz_event, post_blaaiz

    container = build(make_settings(database_url), clock)
    container.start()
    try:
        async with httpx.AsyncClient(transport=AppliedTransport(create_app(container), container),
                                     base_url="http://t") as http:
            await post_blaaiz(http, clock, blaaiz_event("cus_w", "PROCESSING", updated_at="2026-01-05T09:00:00Z"))
            with container.engine.connect() as conn:
                row = conn.execute(select(customers).where(customers.c.provider_customer_id == "cus_w")).one()
            assert row.state == "pending"
            assert row.deadline_at == row.pending_since + timedelta(hours=2)
            assert row.next_poll_at == clock.now() + timedelta(minutes=10)  # Blaaiz: reconcile after quiet
            clock.advance(timedelta(hours=3))
            await sweep(container)
            assert [(a.kind, a.state) for a in alert_rows(container, row.id)] == [("overdue", "open")]
            await post_blaaiz(http, clock, blaaiz_event("cus_w", "VERIFIED", updated_at="2026-01-05T12:00:00Z"))
            assert [(a.kind, a.state) for a in alert_rows(container, row.id)] == [("overdue", "resolved")]
            assert [n.action for n in notices(container)] == ["trigger", "resolve"]
            assert customer(container, row.id).deadline_at is None
            await post_blaaiz(http, clock, blaaiz_event("cus_w", "REJECTED", updated_at="2026-01-05T12:05:00Z"))
            kinds = [a.kind for a in alert_rows(container, row.id)]
            assert kinds == ["overdue", "conflict"]
            assert customer(container, row.id).state == "verified"
    finally:
        container.stop()
        await container.http.aclose()
        container.engine.dispose()


async def test_several_moves_in_one_batch_end_the_escalated_attempt_and_start_the_next(database_url, clock) -> None:
    """The applier applies a batch of stored events together and writes what follows the moves (deadline, tier,
    last signal, next poll, alert resolution) once per customer, from its row as read to its last state.
    Rejected and submitted again in one batch is a new attempt: the old attempt's alert is resolved, and the
    new one gets its own deadline, at tier none."""
    from tests.conftest import blaaiz_event, post_blaaiz
    from tracker.inbox.store import Delivery, store_now
    from tracker.providers import blaaiz

    container = build(make_settings(database_url), clock)
    container.start()
    try:
        async with httpx.AsyncClient(transport=AppliedTransport(create_app(container), container),
                                     base_url="http://t") as http:
            await post_blaaiz(http, clock, blaaiz_event("cus_b", "PROCESSING", updated_at="2026-01-05T09:00:00Z"))
        started = clock.now()
        clock.advance(timedelta(hours=3))
        await sweep(container)
        cid = container.engine.connect().execute(select(customers.c.id)).scalar_one()
        assert customer(container, cid).tier == "overdue"
        clock.advance(timedelta(minutes=1))
        container.applier.stop()  # its thread would look at the inbox on its own: the batch below is the test's
        batch = [
            blaaiz_event("cus_b", "REJECTED", updated_at="2026-01-05T12:01:00Z", comment="Cropped document"),
            blaaiz_event("cus_b", "PROCESSING", updated_at="2026-01-05T12:01:30Z", old_status="REJECTED"),
        ]
        receipts = store_now(container.engine, [Delivery("blaaiz", clock.now(), json.dumps(body).encode(), {},
                                                     blaaiz.parse(body)) for body in batch])
        assert [r.status for r in receipts] == ["accepted", "accepted"]
        assert container.applier.apply_pending() == 2  # one batch
        with container.engine.connect() as conn:
            outcomes = conn.execute(select(inbound_events.c.outcome).where(
                inbound_events.c.id.in_([r.event_id for r in receipts])).order_by(inbound_events.c.id)).scalars()
            assert list(outcomes) == ["applied", "applied"]
        row = customer(container, cid)
        assert (row.state, row.attempts, row.rejections) == ("pending", 2, 1)
        assert row.pending_since == clock.now() != started
        assert row.tier == "none"
        assert row.deadline_at == clock.now() + timedelta(hours=2)
        assert row.last_signal_at == clock.now()
        assert row.next_poll_at == clock.now() + timedelta(minutes=10)
        assert [(a.kind, a.state) for a in alert_rows(container, cid)] == [("overdue", "resolved")]
        assert [n.action for n in notices(container)] == ["trigger", "resolve"]
    finally:
        container.stop()
        await container.http.aclose()
        container.engine.dispose()


def test_a_new_attempt_is_told_by_its_count_even_at_the_same_instant(clock) -> None:
    """Rejected and submitted again within one batch, under a clock that has not moved: pending_since is the
    same, the attempt count is not. The old attempt's alerts go, the new one starts at tier none."""
    from tracker.domain.escalation import EscalationPolicy
    from tracker.domain.lifecycle import Signal, Snapshot, Source, State, Trigger
    from tracker.transitions.plans import Customer, Rules, plan

    rules = Rules(escalation=EscalationPolicy())
    now = clock.now()
    escalated = Customer(1, "blaaiz", "cus_1", "individual", tier="overdue",
                         snapshot=Snapshot(state=State.PENDING, version=3, pending_since=now, attempts=1))
    rejected = plan(escalated, Signal(Trigger.PROVIDER_REJECTED, Source.WEBHOOK), now, rules, actor="blaaiz")
    again = plan(rejected.after, Signal(Trigger.SUBMITTED, Source.API), now, rules, actor="submit")
    assert rejected.resolve_tier_alerts
    assert (again.after.snapshot.pending_since, again.after.snapshot.attempts) == (now, 2)
    assert again.values["tier"] == "none"
    assert again.values["deadline_at"] == now + timedelta(hours=2)
    same = plan(escalated, Signal(Trigger.PROVIDER_REVIEWING, Source.WEBHOOK), now, rules, actor="blaaiz")
    # the same attempt: no new tier or deadline, only when the provider was heard from
    assert (same.values, same.resolve_tier_alerts) == ({"last_signal_at": now}, False)


async def test_an_undocumented_status_in_a_webhook_is_alerted_once(database_url, clock) -> None:
    from tests.conftest import blaaiz_event, post_blaaiz

    container = build(make_settings(database_url), clock)
    container.start()
    try:
        async with httpx.AsyncClient(transport=AppliedTransport(create_app(container), container),
                                     base_url="http://t") as http:
            await post_blaaiz(http, clock, blaaiz_event("cus_u", "PROCESSING", updated_at="2026-01-05T09:00:00Z"))
            for minute in (1, 2):  # the same undocumented value twice, then another one
                answer = await post_blaaiz(http, clock, blaaiz_event("cus_u", "ON_HOLD",
                                                                     updated_at=f"2026-01-05T09:0{minute}:00Z"))
                assert answer.json()["status"] == "accepted"
            await post_blaaiz(http, clock, blaaiz_event("cus_u", "PAUSED", updated_at="2026-01-05T09:03:00Z"))
            with container.engine.connect() as conn:
                row = conn.execute(select(customers).where(customers.c.provider_customer_id == "cus_u")).one()
            assert row.state == "pending"  # treated as still in progress
            assert row.provider_status == "PAUSED"  # kept raw
            assert json.loads(row.flags) == ["unknown_status:ON_HOLD", "unknown_status:PAUSED"]
            raised = alert_rows(container, row.id)
            assert [(a.kind, a.state) for a in raised] == [("unknown_status", "open"), ("unknown_status", "open")]
            assert "ON_HOLD" in raised[0].title
            assert "PAUSED" in raised[1].title
            assert [n.action for n in notices(container)] == ["trigger", "trigger"]
    finally:
        container.stop()
        await container.http.aclose()
        container.engine.dispose()


async def test_a_customer_that_fails_is_rolled_back_alone_and_retried_after_its_lease(database_url, clock,
                                                                                     pocket) -> None:
    """Customers are settled many to a transaction (``SETTLE_CHUNK``), each in its own savepoint: bad data in
    one loses nothing of the others, and that one is tried again once its claim's lease has run out."""
    container = build(settings_for(database_url, incident_threshold=1000), clock, transport=HostRouter.of(pocket))
    try:
        count = SETTLE_CHUNK + 5  # two transactions
        for n in range(count):
            pocket.add_customer(f"usr_c{n}", "processing")
            container.customers.register({"provider": "cryptopocket", "provider_customer_id": f"usr_c{n}",
                                          "customer_type": "individual"})
        for _ in range(20):
            await container.poller.tick()
            await container.poller.drain()
        with container.engine.begin() as conn:
            ids = [row.id for row in conn.execute(select(customers.c.id).where(customers.c.state == "pending")
                                                  .order_by(customers.c.id))]
            assert len(ids) == count
            bad = ids[3]
            conn.execute(update(customers).where(customers.c.id == bad).values(tier="bogus"))
        clock.advance(timedelta(hours=2))
        await sweep(container)
        alerted = {a.customer_id for a in alert_rows(container) if a.kind == "overdue"}
        assert alerted == set(ids) - {bad}
        assert customer(container, bad).deadline_lease_owner is not None  # still claimed: not retried yet
        with container.engine.begin() as conn:
            conn.execute(update(customers).where(customers.c.id == bad).values(tier="none"))
        await sweep(container)
        assert [a.kind for a in alert_rows(container, bad)] == []  # the lease still holds
        clock.advance(timedelta(seconds=61))  # TRACKER_POLL_LEASE, 60 s by default
        await sweep(container)
        assert [a.kind for a in alert_rows(container, bad)] == ["overdue"]
        assert sum(1 for a in alert_rows(container) if a.kind == "overdue") == count  # each exactly once
    finally:
        await close(container)


async def test_the_customer_record_says_when_its_next_tier_is_due(app, clock, pocket) -> None:
    """``next_tier`` / ``next_tier_at`` in the API's customer: overdue at 2 h, then critical at 5 h, then none;
    the ETag moves with them (each step raises the tier)."""
    cid = await make_pending(app, pocket, "usr_next")
    key = {"authorization": f"Bearer {app.api_keys.create('reader', 'read')}"}
    async with httpx.AsyncClient(transport=AppliedTransport(create_app(app), app), base_url="http://t") as http:
        async def shown() -> tuple[str | None, str | None, str]:
            response = await http.get(f"/v1/customers/{cid}", headers=key)
            body = response.json()
            return body["next_tier"], body["next_tier_at"], response.headers["etag"]

        t0 = customer(app, cid).pending_since
        first = await shown()
        assert first[:2] == ("overdue", (t0 + timedelta(hours=2)).isoformat().replace("+00:00", "Z"))
        clock.set(t0 + timedelta(hours=2))
        await sweep(app)
        second = await shown()
        assert second[:2] == ("critical", (t0 + timedelta(hours=5)).isoformat().replace("+00:00", "Z"))
        assert second[2] != first[2]
        clock.set(t0 + timedelta(hours=5))
        await sweep(app)
        assert (await shown())[:2] == (None, None)
