"""The poller against the provider simulators, on a fake clock: claims, mapping into the lifecycle,
scheduling, failures, Retry-After, the circuit breaker, leases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import close, make_settings
from tracker.bootstrap import Container, build
from tracker.clock import FakeClock
from tracker.db import queries
from tracker.db.engine import write_transaction
from tracker.db.tables import customers, history, provider_state
from tracker.providers.simulators import BlaaizSimulator, ConnectFiSimulator, CryptoPocketSimulator, HostRouter


@pytest.fixture
def sims(clock: FakeClock) -> dict[str, Any]:
    blaaiz = BlaaizSimulator(clock=clock)
    blaaiz.limits = []
    return {"blaaiz": blaaiz, "connectfi": ConnectFiSimulator(clock=clock),
            "cryptopocket": CryptoPocketSimulator(clock=clock)}


@pytest.fixture
async def polling(database_url: str, clock: FakeClock, sims: dict[str, Any]) -> AsyncIterator[Container]:
    settings = make_settings(
        database_url,
        blaaiz_base_url=BlaaizSimulator.default_base_url, blaaiz_client_id="sim-blaaiz-client",
        blaaiz_client_secret="sim-blaaiz-secret",
        connectfi_base_url=ConnectFiSimulator.default_base_url, connectfi_login="sim-connectfi-login",
        connectfi_password="sim-connectfi-password",
        cryptopocket_base_url=CryptoPocketSimulator.api_base_url, cryptopocket_api_key="sim-cryptopocket-key",
        cryptopocket_api_secret="sim-cryptopocket-secret",
        rate_limits={}, poll_interval=timedelta(minutes=5),
    )
    container = build(settings, clock, transport=HostRouter.of(*sims.values()))
    container.start()
    yield container
    await close(container)


def provider_row(conn: Any, provider: str = "cryptopocket") -> Any:
    return next(r for r in queries.provider_states(conn) if r.provider == provider)


async def tick(container: Container) -> int:
    started = await container.poller.tick()
    await container.poller.drain()
    return started


def row(container: Container, customer_id: int) -> Any:
    with container.engine.connect() as conn:
        return queries.get_customer(conn, customer_id)


def register(container: Container, provider: str, pcid: str, **fields: Any) -> int:
    result = container.customers.register({"provider": provider, "provider_customer_id": pcid,
                                           "customer_type": fields.pop("customer_type", "individual"), **fields})
    return int(result.row.id)


async def test_cryptopocket_customer_moves_by_polling_alone(polling, clock, sims) -> None:
    sim = sims["cryptopocket"]
    sim.add_customer("usr_1", "unused")
    cid = register(polling, "cryptopocket", "usr_1")
    assert row(polling, cid).next_poll_at == clock.now()  # self-service: polled at once, then slowly

    assert await tick(polling) == 1
    assert row(polling, cid).state == "awaiting_documents"
    assert row(polling, cid).next_poll_at == clock.now() + timedelta(minutes=15)
    assert await tick(polling) == 0  # nothing due

    sim.set_status("usr_1", "processing")
    clock.advance(timedelta(minutes=15))
    await tick(polling)
    current = row(polling, cid)
    assert (current.state, current.provider_status, current.pending_since) == ("pending", "processing", clock.now())
    assert current.next_poll_at == clock.now() + timedelta(seconds=30)  # soon after the review starts

    sim.set_status("usr_1", "valid")
    clock.advance(timedelta(seconds=30))
    await tick(polling)
    current = row(polling, cid)
    assert current.state == "verified"
    assert current.next_poll_at is None  # final: never polled again
    with polling.engine.connect() as conn:
        rows = conn.execute(select(history.c.trigger, history.c.source).where(history.c.customer_id == cid)
                            .order_by(history.c.id)).all()
    assert [tuple(r) for r in rows] == [("provider_reviewing", "poll"), ("provider_approved", "poll")]


async def test_pending_backoff_reaches_the_ceiling(polling, clock, sims) -> None:
    sims["cryptopocket"].add_customer("usr_2", "processing")
    cid = register(polling, "cryptopocket", "usr_2")
    await tick(polling)
    gaps = []
    for _ in range(20):
        due = row(polling, cid).next_poll_at
        gaps.append(due - clock.now())
        clock.set(due)
        await tick(polling)
    assert gaps[0] == timedelta(seconds=30)
    assert gaps == sorted(gaps)  # backing off...
    assert gaps[-1] == timedelta(minutes=5)  # ...to the ceiling


async def test_one_poll_right_before_each_threshold(polling, clock, sims) -> None:
    sims["cryptopocket"].add_customer("usr_3", "processing")
    cid = register(polling, "cryptopocket", "usr_3")
    await tick(polling)
    start = row(polling, cid).pending_since
    due_times = []
    while clock.now() < start + timedelta(hours=5, minutes=1):
        due = row(polling, cid).next_poll_at
        due_times.append(due - start)
        clock.set(due)
        await tick(polling)
    for threshold in (timedelta(hours=2), timedelta(hours=5)):
        assert threshold - timedelta(minutes=1) in due_times


async def test_blaaiz_pending_is_reconciled_only_after_quiet_period(polling, clock, sims) -> None:
    sim = sims["blaaiz"]
    sim.add_customer("cus_b1", "PROCESSING")
    cid = register(polling, "blaaiz", "cus_b1")
    assert row(polling, cid).next_poll_at is None  # Blaaiz pushes; nothing to poll before submission
    polling.customers.submit(cid)
    assert row(polling, cid).next_poll_at == clock.now() + timedelta(minutes=10)
    assert await tick(polling) == 0
    sim.set_status("cus_b1", "VERIFIED")
    clock.advance(timedelta(minutes=10))
    assert await tick(polling) == 1
    assert row(polling, cid).state == "verified"
    assert sim.count(path_contains="/customer/cus_b1") == 1


async def test_blaaiz_business_is_not_polled_inside_its_review_window(polling, clock, sims) -> None:
    sims["blaaiz"].add_customer("cus_biz", "PROCESSING", type="business")
    cid = register(polling, "blaaiz", "cus_biz", customer_type="business")
    polling.customers.submit(cid)  # a Monday (2026-01-05)
    due = row(polling, cid).next_poll_at
    assert due == clock.now() + timedelta(days=7)  # 5 business days later: the next Monday
    for _ in range(20):
        clock.advance(timedelta(hours=8))
        if clock.now() < due:
            assert await tick(polling) == 0
    assert sims["blaaiz"].count(path_contains="cus_biz") == 0


async def test_unknown_status_is_kept_raw_flagged_once_and_moves_nothing(polling, clock, sims) -> None:
    sims["cryptopocket"].add_customer("usr_4", "on_hold")
    cid = register(polling, "cryptopocket", "usr_4")
    await tick(polling)
    clock.advance(timedelta(minutes=15))
    await tick(polling)
    current = row(polling, cid)
    assert (current.state, current.provider_status) == ("awaiting_documents", "on_hold")
    assert queries.flags_of(current._mapping) == ["unknown_status:on_hold"]
    text = polling.metrics.render().decode()
    assert 'tracker_unknown_status_total{provider="cryptopocket"} 1.0' in text


async def test_connectfi_needs_an_application_id(polling, clock, sims) -> None:
    sims["connectfi"].add_application("app_1", "cf_1", "waiting_review")
    without = register(polling, "connectfi", "cf_1")
    assert row(polling, without).next_poll_at is None
    register(polling, "connectfi", "cf_1", application_id="app_1")
    await tick(polling)
    assert row(polling, without).state == "pending"
    sims["connectfi"].set_status("app_1", "completed", outcome="Denied")
    clock.advance(timedelta(minutes=1))
    await tick(polling)
    current = row(polling, without)
    assert (current.state, current.rejection_reason) == ("rejected", "Denied")


async def test_failures_back_off_and_open_the_breaker(polling, clock, sims) -> None:
    sim = sims["cryptopocket"]
    for n in range(6):
        sim.add_customer(f"usr_f{n}", "processing")
        register(polling, "cryptopocket", f"usr_f{n}")
    sim.fail(times=100, status=500, path="/kyc/check")
    await tick(polling)
    with polling.engine.connect() as conn:
        state = provider_row(conn)
        rows = conn.execute(select(customers.c.poll_failures, customers.c.next_poll_at)).all()
    assert state.breaker_state == "open"
    assert all(r.poll_failures == 1 and r.next_poll_at > clock.now() for r in rows)
    requests_before = sim.count(path_contains="/kyc/check")
    for _ in range(5):  # while open: not one request
        clock.advance(timedelta(seconds=5))
        assert await tick(polling) == 0
    assert sim.count(path_contains="/kyc/check") == requests_before
    sim.clear_faults()
    clock.advance(timedelta(seconds=60))
    assert await tick(polling) == 1  # half open: one probe
    with polling.engine.connect() as conn:
        assert provider_row(conn).breaker_state == "closed"
    assert await tick(polling) == 5  # closed again: the rest follow


async def test_retry_after_holds_the_whole_provider(polling, clock, sims) -> None:
    sim = sims["cryptopocket"]
    for n in range(3):
        sim.add_customer(f"usr_r{n}", "processing")
        register(polling, "cryptopocket", f"usr_r{n}")
    sim.throttle(times=1, retry_after="120", path="/kyc/check")
    await tick(polling)
    with polling.engine.connect() as conn:
        state = conn.execute(select(provider_state).where(provider_state.c.provider == "cryptopocket")).one()
    assert state.blocked_until == clock.now() + timedelta(seconds=120)
    throttled = [r for r in sim.requests if r.status == 429]
    assert len(throttled) == 1
    clock.advance(timedelta(seconds=119))
    assert await tick(polling) == 0
    clock.advance(timedelta(seconds=2))
    assert await tick(polling) >= 1


async def test_claims_are_leased_and_expired_leases_return(polling, clock, sims) -> None:
    sims["cryptopocket"].add_customer("usr_l", "processing")
    cid = register(polling, "cryptopocket", "usr_l")
    with write_transaction(polling.engine) as conn:  # another worker claimed it, then died
        claimed = queries.claim_due(conn, "cryptopocket", clock.now(), 10, "dead-worker",
                                    clock.now() + timedelta(seconds=60))
    assert [r.id for r in claimed] == [cid]
    assert await tick(polling) == 0
    clock.advance(timedelta(seconds=61))
    assert await tick(polling) == 1
    assert row(polling, cid).state == "pending"
    assert row(polling, cid).poll_lease_owner is None


async def test_result_of_a_lost_claim_is_dropped(polling, clock, sims) -> None:
    sims["cryptopocket"].add_customer("usr_x", "valid")
    cid = register(polling, "cryptopocket", "usr_x")
    with write_transaction(polling.engine) as conn:
        queries.claim_due(conn, "cryptopocket", clock.now(), 10, "someone-else", clock.now() + timedelta(seconds=5))
    from tracker.domain.lifecycle import Source
    from tracker.providers.base import StatusReport
    from tracker.providers.cryptopocket import map_kyc_status

    raw, signal, _ = map_kyc_status("valid", Source.POLL)
    polling.poller.results.success("cryptopocket", cid, StatusReport("usr_x", raw, signal))
    assert row(polling, cid).state == "awaiting_documents"  # not ours: not applied


async def test_missed_ticks_are_caught_up(polling, clock, sims) -> None:
    for n in range(4):
        sims["cryptopocket"].add_customer(f"usr_m{n}", "unused")
        register(polling, "cryptopocket", f"usr_m{n}")
    await tick(polling)
    clock.advance(timedelta(hours=3))  # the worker was down
    assert await tick(polling) == 4


async def test_provider_outage_then_recovery(database_url, clock, sims) -> None:
    """500s for minutes, then 429s with Retry-After, then timeouts, then recovery: no crash, no request inside
    a Retry-After window, requests bounded by the backoff, every customer polled within one interval after."""
    sim = sims["cryptopocket"]
    settings = make_settings(database_url, cryptopocket_base_url=CryptoPocketSimulator.api_base_url,
                             cryptopocket_api_key="sim-cryptopocket-key",
                             cryptopocket_api_secret="sim-cryptopocket-secret", rate_limits={},
                             poll_interval=timedelta(minutes=5), poll_timeout=timedelta(seconds=0.2))
    container = build(settings, clock, transport=HostRouter.of(sim))
    try:
        ids = []
        for n in range(20):
            sim.add_customer(f"usr_o{n}", "processing")
            ids.append(register(container, "cryptopocket", f"usr_o{n}"))
        await tick(container)  # all pending now
        sim.reset_log()
        start = clock.now()

        async def run_for(seconds: int) -> None:
            for _ in range(seconds):
                clock.advance(timedelta(seconds=1))
                await tick(container)

        sim.fail(times=10_000, status=500, path="/kyc/check")
        await run_for(180)
        sim.clear_faults()
        sim.throttle(times=10_000, retry_after="30", path="/kyc/check")
        await run_for(120)
        sim.clear_faults()
        sim.hang(times=10_000, seconds=1.0, path="/kyc/check")
        await run_for(120)
        sim.clear_faults()
        recovered = clock.now()
        outage = [r for r in sim.requests if "/kyc/check" in r.path]
        # Bounded by the breaker's backoff, not by customers x ticks (20 x 420 here).
        assert len(outage) <= 40, len(outage)
        throttled = [r.at for r in outage if r.status == 429]
        assert throttled
        for at in throttled:
            inside = [r for r in outage if at < r.at < at + timedelta(seconds=30)]
            assert inside == [], f"requests inside the Retry-After window after {at}"

        await run_for(300)
        with container.engine.connect() as conn:
            rows = conn.execute(select(customers.c.id, customers.c.last_polled_at, customers.c.poll_failures)
                                .where(customers.c.id.in_(ids))).all()
        with container.engine.connect() as conn:
            state = provider_row(conn)
        assert all(r.poll_failures == 0 for r in rows), (rows, state, recovered, [
            (r.at, r.status) for r in sim.requests[-30:]])
        assert all(r.last_polled_at is not None and r.last_polled_at > recovered for r in rows)
        assert all(r.last_polled_at <= recovered + timedelta(minutes=5) for r in rows)
        assert start < recovered
    finally:
        await close(container)


async def test_blaaiz_list_reconciles_many_pending_customers_in_few_calls(polling, clock, sims) -> None:
    sim = sims["blaaiz"]
    ids = {}
    for n in range(30):
        pcid = f"cus_r{n:02d}"
        sim.add_customer(pcid, "PROCESSING" if n < 25 else "VERIFIED")
        ids[pcid] = register(polling, "blaaiz", pcid)
        polling.customers.submit(ids[pcid])
    clock.advance(timedelta(minutes=10))
    assert await tick(polling) == 30
    list_calls = sim.count(path_contains="/api/external/customer", method="GET") - sum(
        sim.count(path_contains=f"/customer/{pcid}") for pcid in ids)
    single_calls = sum(sim.count(path_contains=f"/customer/{pcid}") for pcid in ids)
    assert list_calls == 2  # 25 in review, 15 a page
    assert single_calls == 5  # only those not found in the lists
    states = {pcid: row(polling, cid).state for pcid, cid in ids.items()}
    assert [p for p, s in states.items() if s == "verified"] == [f"cus_r{n}" for n in range(25, 30)]
    assert all(row(polling, cid).last_polled_at == clock.now() for cid in ids.values())
    assert all(row(polling, cid).next_poll_at > clock.now() for pcid, cid in ids.items() if states[pcid] == "pending")


async def test_breaker_state_shows_in_summary_and_metrics(polling, clock, sims) -> None:
    sim = sims["cryptopocket"]
    for n in range(6):
        sim.add_customer(f"usr_h{n}", "processing")
        register(polling, "cryptopocket", f"usr_h{n}")
    sim.fail(times=100, status=500, path="/kyc/check")
    await tick(polling)
    health = polling.provider_health()
    assert health["cryptopocket"]["breaker"] == "open"
    assert "HTTP 500" in health["cryptopocket"]["last_error"]
    assert health["blaaiz"]["polled"] is True
    text = polling.metrics.render().decode()
    assert 'tracker_provider_breaker{provider="cryptopocket",state="open"} 1.0' in text
    assert 'tracker_provider_breaker{provider="cryptopocket",state="closed"} 0.0' in text
    import httpx

    from tracker.web.app import create_app

    key = polling.api_keys.create("dash", "read")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(polling)), base_url="http://t") as http:
        summary = (await http.get("/v1/summary", headers={"authorization": f"Bearer {key}"})).json()
    assert summary["providers"]["cryptopocket"]["health"]["breaker"] == "open"
    assert summary["providers"]["connectfi"]["health"]["breaker"] == "closed"


async def test_provider_health_says_when_the_last_poll_was_answered_and_when_the_last_error_was(
        polling, clock, sims) -> None:
    sim = sims["cryptopocket"]
    sim.add_customer("usr_s1", "processing")
    cid = register(polling, "cryptopocket", "usr_s1")
    assert polling.provider_health()["cryptopocket"]["last_success_at"] is None
    await tick(polling)
    answered = clock.now()
    assert polling.provider_health()["cryptopocket"]["last_success_at"] == answered
    # answers within SUCCESS_RESOLUTION write nothing on the shared row; the next one after it does
    clock.advance(timedelta(seconds=20))
    polling.poller.gate.outcome("cryptopocket", None)
    assert polling.provider_health()["cryptopocket"]["last_success_at"] == answered
    clock.advance(timedelta(seconds=15))
    polling.poller.gate.outcome("cryptopocket", None)
    assert polling.provider_health()["cryptopocket"]["last_success_at"] == clock.now()
    assert polling.provider_health()["cryptopocket"]["last_error_at"] is None
    sim.fail(times=1, status=500, path="/kyc/check")
    clock.advance(timedelta(minutes=5))
    await polling.poller.poll_now(cid, "operator:test")
    health = polling.provider_health()["cryptopocket"]
    assert "HTTP 500" in health["last_error"]
    assert health["last_error_at"] == clock.now()
    assert health["last_success_at"] == clock.now() - timedelta(minutes=5)


async def test_a_provider_without_a_budget_is_polled_as_fast_as_its_concurrency_allows(polling, clock, sims) -> None:
    # No rate limit configured: one tick claims twice the concurrency (4 by default), and each finished poll
    # claims again, so every due customer is polled now, not 8 per tick.
    sim = sims["cryptopocket"]
    ids = []
    for n in range(30):
        sim.add_customer(f"usr_many_{n}", "processing")
        ids.append(register(polling, "cryptopocket", f"usr_many_{n}"))
    started = await polling.poller.tick()
    assert started == 8
    await polling.poller.drain()
    assert all(row(polling, cid).state == "pending" for cid in ids)
    assert all(row(polling, cid).last_polled_at == clock.now() for cid in ids)
    with polling.engine.connect() as conn:
        assert queries.count_due(conn, "cryptopocket", clock.now()) == 0
        leased = conn.execute(select(customers.c.id).where(customers.c.poll_lease_owner.is_not(None))).all()
    assert leased == []  # every claim was settled and released


async def test_an_answer_the_tracker_cannot_store_backs_that_customer_off_and_no_other(polling, clock, sims
                                                                                       ) -> None:
    """A status over 64 characters (or holding NUL) would fail the customer's write on PostgreSQL at every poll:
    it is a failed poll of that customer ("invalid": backs off, never the provider's breaker)."""
    sims["cryptopocket"].add_customer("usr_long", "x" * 65)
    sims["cryptopocket"].add_customer("usr_fine", "processing")
    long_id = register(polling, "cryptopocket", "usr_long")
    fine_id = register(polling, "cryptopocket", "usr_fine")
    await tick(polling)
    bad, good = row(polling, long_id), row(polling, fine_id)
    assert (bad.state, bad.provider_status, bad.poll_failures) == ("awaiting_documents", None, 1)
    assert bad.next_poll_at > clock.now()
    assert (good.state, good.poll_failures) == ("pending", 0)
    with polling.engine.connect() as conn:
        state = provider_row(conn)
    assert state.breaker_state == "closed"
    assert "status is 65 characters long" in state.last_error
