"""A provider's clock is the order of its events, but never a way to freeze a customer: a time far ahead of the
tracker's clock is ordered by its receipt instead (and flagged), and a time that cannot be read is refused."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.conftest import blaaiz_event, post_blaaiz
from tracker.db.tables import customers, history, inbound_events
from tracker.transitions.plans import FUTURE_TIME


def _iso(when) -> str:  # type: ignore[no-untyped-def]
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_an_event_dated_in_the_year_9999_then_a_real_rejection_ends_rejected(client, clock, container,
                                                                                    write_key, read_key) -> None:
    created = await client.post("/v1/customers", headers=write_key, json={
        "provider": "blaaiz", "provider_customer_id": "cus_9", "customer_type": "individual"})
    cid = created.json()["id"]
    await client.post(f"/v1/customers/{cid}/submit", headers=write_key)

    future = await post_blaaiz(client, clock, blaaiz_event("cus_9", "PROCESSING", updated_at="9999-12-31T23:59:59Z"))
    assert future.json()["status"] == "accepted"
    with container.engine.connect() as conn:
        row = conn.execute(select(inbound_events).where(inbound_events.c.id == future.json()["event"])).one()
    assert FUTURE_TIME in row.reason
    assert row.provider_time.year == 9999  # kept as sent
    got = (await client.get(f"/v1/customers/{cid}", headers=read_key)).json()
    assert FUTURE_TIME in got["flags"]
    assert got["state"] == "pending"

    clock.advance(timedelta(minutes=3))
    real = await post_blaaiz(client, clock, blaaiz_event("cus_9", "REJECTED", updated_at=_iso(clock.now()),
                                                         comment="Blurred document"))
    assert real.json()["status"] == "accepted"
    got = (await client.get(f"/v1/customers/{cid}", headers=read_key)).json()
    assert got["state"] == "rejected"
    assert got["rejection_reason"] == "Blurred document"


async def test_a_time_within_the_allowed_skew_orders_events_as_sent(client, clock, container, write_key,
                                                                    read_key) -> None:
    """Two minutes ahead is a clock's ordinary drift (TRACKER_CLOCK_SKEW is 5 minutes): the time is trusted,
    so an event dated before it is stale, and nothing is flagged."""
    ahead = clock.now() + timedelta(minutes=2)
    first = await post_blaaiz(client, clock, blaaiz_event("cus_8", "PROCESSING", updated_at=_iso(ahead)))
    older = await post_blaaiz(client, clock, blaaiz_event("cus_8", "VERIFIED",
                                                          updated_at=_iso(ahead - timedelta(seconds=30))))
    with container.engine.connect() as conn:
        outcomes = dict(conn.execute(select(inbound_events.c.id, inbound_events.c.outcome).where(
            inbound_events.c.id.in_([first.json()["event"], older.json()["event"]]))).all())
        flags = conn.execute(select(customers.c.flags).where(customers.c.provider_customer_id == "cus_8")
                             ).scalar_one()
    assert outcomes[older.json()["event"]] == "stale"
    assert FUTURE_TIME not in (flags or "")


async def test_a_future_time_is_ordered_by_receipt_and_history_keeps_it_as_sent(client, clock, container) -> None:
    sent = "2030-06-01T00:00:00Z"
    response = await post_blaaiz(client, clock, blaaiz_event("cus_7", "PROCESSING", updated_at=sent))
    with container.engine.connect() as conn:
        customer = conn.execute(select(customers).where(customers.c.provider_customer_id == "cus_7")).one()
        moves = conn.execute(select(history).where(history.c.customer_id == customer.id)).all()
    assert response.json()["status"] == "accepted"
    assert customer.state == "pending"
    assert customer.last_provider_time == clock.now()  # the receipt, for ordering
    assert json.loads(customer.flags) == [FUTURE_TIME]
    assert [_iso(move.provider_time) for move in moves] == [sent]


@pytest.mark.parametrize("updated_at", ['"yesterday"', '"2026-13-45T99:00:00Z"', "NaN", "Infinity", "1e400",
                                        "99999999999999999999", "-1e20", "true", '{"at": 1}', "[1]"])
async def test_an_updated_at_that_is_no_time_is_400_stored_as_rejected(client, clock, container, updated_at: str
                                                                       ) -> None:
    """Refused with the reason (the provider sees what is wrong), kept as rejected, and nothing else changes:
    accepted without a time, it would skip the stale check."""
    body = json.dumps(blaaiz_event("cus_6", "VERIFIED", updated_at="X")).replace('"X"', updated_at).encode()
    response = await post_blaaiz(client, clock, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_event"
    assert "updated_at cannot be read" in error["message"]
    with container.engine.connect() as conn:
        row = conn.execute(select(inbound_events)).one()
        assert conn.execute(select(customers)).all() == []
    assert row.outcome == "rejected"
    assert f"stored as event {row.id}" in error["message"]
