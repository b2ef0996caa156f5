"""The applier: stored events applied in arrival order, one bad event never holding back the others, errors
retried then left for replay, and on PostgreSQL one applier at a time with a takeover when it dies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select

from tests.conftest import BACKEND, SECRET, blaaiz_event
from tracker.bootstrap import Container, build
from tracker.clock import FakeClock
from tracker.db.tables import customers, history, inbound_events
from tracker.inbox.batch import MAX_ATTEMPTS
from tracker.inbox.lease import Lease
from tracker.inbox.store import Delivery, Receipt, store_now
from tracker.providers import blaaiz
from tracker.settings import Settings


@pytest.fixture
def idle(settings: Settings, clock: FakeClock) -> Any:
    """A tracker whose applier does not run on its own: the test applies when it says."""
    container = build(settings, clock)
    yield container
    container.engine.dispose()


def deliver(container: Container, clock: FakeClock, *payloads: dict[str, Any], wake: bool = False
            ) -> list[Receipt]:
    return store_now(container.engine, [Delivery("blaaiz", clock.now(), json.dumps(p).encode(), {}, blaaiz.parse(p))
                                        for p in payloads], wake=wake)


def inbox_rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(inbound_events).order_by(inbound_events.c.id)))


def customer_row(engine: Engine, pcid: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(customers).where(customers.c.provider_customer_id == pcid)).one()


def test_events_of_one_customer_apply_in_arrival_order_in_one_batch(idle: Container, clock: FakeClock) -> None:
    deliver(idle, clock, blaaiz_event("cus_o", "PROCESSING", updated_at="2026-01-05T09:00:00Z"),
            blaaiz_event("cus_o", "REJECTED", updated_at="2026-01-05T09:01:00Z", comment="blurred"),
            blaaiz_event("cus_o", "PROCESSING", updated_at="2026-01-05T09:02:00Z"))
    assert idle.applier.apply_pending() == 3
    row = customer_row(idle.engine, "cus_o")
    assert (row.state, row.attempts, row.rejections) == ("pending", 2, 1)
    with idle.engine.connect() as conn:
        moves = conn.execute(select(history.c.from_state, history.c.to_state).order_by(history.c.id)).all()
    assert [tuple(m) for m in moves] == [("awaiting_documents", "pending"), ("pending", "rejected"),
                                         ("rejected", "pending")]
    assert [r.outcome for r in inbox_rows(idle.engine)] == ["applied"] * 3
    assert idle.applier.apply_pending() == 0  # nothing applies twice


def test_the_providers_last_webhook_is_noted_to_within_thirty_seconds(idle: Container, clock: FakeClock) -> None:
    assert idle.provider_health()["blaaiz"]["last_webhook_at"] is None
    first = clock.now()
    deliver(idle, clock, blaaiz_event("cus_w1", "PROCESSING"))
    clock.advance(timedelta(seconds=20))
    deliver(idle, clock, blaaiz_event("cus_w2", "PROCESSING"))
    idle.applier.drain()
    assert idle.provider_health()["blaaiz"]["last_webhook_at"] == clock.now()  # the latest of the batch
    clock.advance(timedelta(seconds=10))
    deliver(idle, clock, blaaiz_event("cus_w3", "PROCESSING"))
    idle.applier.drain()
    assert idle.provider_health()["blaaiz"]["last_webhook_at"] == first + timedelta(seconds=20)  # not yet 30 s on
    clock.advance(timedelta(seconds=25))
    deliver(idle, clock, blaaiz_event("cus_w3", "VERIFIED", updated_at="2026-01-05T10:00:00Z"))
    idle.applier.drain()
    assert idle.provider_health()["blaaiz"]["last_webhook_at"] == clock.now()
    assert idle.provider_health()["cryptopocket"]["last_webhook_at"] is None


def test_one_bad_event_fails_alone_is_retried_then_left_for_replay(idle: Container, clock: FakeClock,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import tracker.transitions.plans as plans

    real = plans.decide

    def bug_for_one_customer(snapshot: Any, signal: Any, now: Any) -> Any:
        if signal.comment == "trigger the bug":
            raise RuntimeError("simulated bug")
        return real(snapshot, signal, now)

    monkeypatch.setattr(plans, "decide", bug_for_one_customer)
    deliver(idle, clock, blaaiz_event("cus_a", "PROCESSING"), blaaiz_event("cus_bad", "REJECTED",
                                                                           comment="trigger the bug"),
            blaaiz_event("cus_c", "VERIFIED"))
    assert idle.applier.apply_pending() == 3
    good_a, bad, good_c = inbox_rows(idle.engine)
    assert (good_a.outcome, good_c.outcome) == ("applied", "applied")
    assert (bad.outcome, bad.processed_at, bad.attempts) == ("error", None, 1)
    assert "simulated bug" in bad.reason
    assert idle.applier.apply_pending() == 0  # not due before its retry
    for attempt in range(2, MAX_ATTEMPTS + 1):
        clock.advance(timedelta(seconds=2 ** (attempt - 1)))
        assert idle.applier.apply_pending() == 1
        bad = inbox_rows(idle.engine)[1]
        assert (bad.outcome, bad.attempts) == ("error", attempt)
    assert bad.processed_at is not None  # given up: left for `tracker replay`
    clock.advance(timedelta(days=1))
    assert idle.applier.apply_pending() == 0
    monkeypatch.undo()
    assert idle.applier.replay(bad.id).outcome == "applied"
    assert customer_row(idle.engine, "cus_bad").state == "rejected"


def test_the_applier_thread_applies_what_is_stored_without_being_asked(container: Container, clock) -> None:
    """The running tracker's applier wakes when its inbox writer has stored a batch."""
    import asyncio

    async def post() -> Receipt:
        payload = blaaiz_event("cus_t", "PROCESSING")
        return await container.inbox.submit(Delivery("blaaiz", clock.now(), json.dumps(payload).encode(), {},
                                                     blaaiz.parse(payload)))

    receipt = asyncio.run(post())
    deadline = time.monotonic() + 10
    while inbox_rows(container.engine)[0].processed_at is None:
        assert time.monotonic() < deadline, "not applied within 10 s"
        time.sleep(0.01)
    assert inbox_rows(container.engine)[0].id == receipt.event_id
    assert customer_row(container.engine, "cus_t").state == "pending"


def test_tracker_worker_applies_the_inbox(database_url: str, settings: Settings, clock: FakeClock) -> None:
    """``tracker worker`` runs an applier too (the Procfile's web processes may all be busy or gone)."""
    container = build(settings, clock)
    try:
        env = {**os.environ, "TRACKER_DATABASE_URL": database_url, "TRACKER_BLAAIZ_WEBHOOK_SECRETS": SECRET}
        worker = subprocess.Popen([sys.executable, "-m", "tracker.cli", "worker"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deliver(container, clock, blaaiz_event("cus_w", "PROCESSING"))
            deadline = time.monotonic() + 30
            while inbox_rows(container.engine)[0].processed_at is None:
                assert worker.poll() is None, worker.stderr.read().decode() if worker.stderr else ""
                assert time.monotonic() < deadline, "the worker did not apply the event within 30 s"
                time.sleep(0.05)
            assert customer_row(container.engine, "cus_w").state == "pending"
        finally:
            worker.terminate()
            worker.wait(20)
    finally:
        container.engine.dispose()


@pytest.mark.postgres
def test_one_applier_at_a_time_and_another_takes_over_when_it_goes(idle: Container) -> None:
    if BACKEND != "postgres":
        pytest.skip("the lease is PostgreSQL's advisory lock; SQLite has one process")
    first, second = Lease(idle.engine), Lease(idle.engine)
    woken = threading.Event()
    first.start(woken)
    try:
        deadline = time.monotonic() + 5
        while not first.held():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        second.start(threading.Event())
        time.sleep(0.5)  # several of its attempts to take the lock
        assert not second.held()
        first.stop()  # its session ends: the server drops the lock
        deadline = time.monotonic() + 5
        while not second.held():
            assert time.monotonic() < deadline, "no takeover within 5 s"
            time.sleep(0.01)
    finally:
        first.stop()
        second.stop()


@pytest.mark.postgres
def test_a_notify_from_another_process_wakes_the_applier(idle: Container, clock: FakeClock) -> None:
    if BACKEND != "postgres":
        pytest.skip("NOTIFY is PostgreSQL's")
    lease = Lease(idle.engine)
    woken = threading.Event()
    lease.start(woken)
    try:
        deadline = time.monotonic() + 5
        while not lease.held():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        woken.clear()
        deliver(idle, clock, blaaiz_event("cus_n", "PROCESSING"))  # as the applier's own process stores
        assert not woken.wait(0.5), "woken by its own process's batch (the writer wakes it directly)"
        deliver(idle, clock, blaaiz_event("cus_m", "PROCESSING"), wake=True)  # as another process stores
        assert woken.wait(2), "no wake-up after a stored batch"
    finally:
        lease.stop()
