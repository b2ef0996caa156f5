"""POST /webhooks/blaaiz: signatures, answers, duplicates, stale events, discovery, bad input.

A delivery is stored (its answer: accepted, duplicate, ignored; 400 when unreadable) and applied afterwards
(``tracker.inbox.applier``): the ``client`` fixture drains the applier after every webhook, so a test reads the
applied effect and the stored event's outcome right after the answer.
"""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event, func, select

from tests.conftest import OLD_SECRET, AppliedTransport, blaaiz_event, post_blaaiz, register, signed_headers
from tracker.alerts import raise_alerts
from tracker.bootstrap import Container
from tracker.clock import FakeClock
from tracker.db.engine import make_engine
from tracker.db.tables import alerts, customers, history, inbound_events
from tracker.errors import DatabaseUnavailable
from tracker.inbox.store import Delivery, Receipt, store_now
from tracker.inbox.writer import InboxWriter
from tracker.providers import blaaiz
from tracker.transitions.plans import NewAlert
from tracker.web.app import create_app


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                for name, table in (("customers", customers), ("events", inbound_events), ("history", history))}


def customer_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(customers).order_by(customers.c.id))]


def unheard(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows without what only says the provider was heard from (and the count of writes it makes)."""
    return [{k: v for k, v in row.items() if k not in ("last_signal_at", "touches")} for row in rows]


def stored_event(engine: Engine, event_id: int) -> Any:
    """The inbox row a webhook's answer names."""
    with engine.connect() as conn:
        return conn.execute(select(inbound_events).where(inbound_events.c.id == event_id)).one()


async def pending_customer(client: httpx.AsyncClient, key: dict[str, str], pcid: str = "cus_1") -> dict[str, Any]:
    customer = await register(client, key, pcid)
    response = await client.post(f"/v1/customers/{customer['id']}/submit", headers=key)
    assert response.json()["state"] == "pending"
    return dict(response.json())


async def test_verified_webhook_moves_pending_customer(client, clock, write_key, read_key, engine) -> None:
    customer = await pending_customer(client, write_key)
    response = await post_blaaiz(client, clock, blaaiz_event("cus_1", "VERIFIED"))
    assert response.status_code == 200
    assert response.json()["status"] == "accepted"
    got = (await client.get(f"/v1/customers/{customer['id']}", headers=read_key)).json()
    assert got["state"] == "verified"
    assert got["provider_status"] == "VERIFIED"
    assert got["decided_at"] is not None
    assert got["version"] == customer["version"] + 1
    row = stored_event(engine, response.json()["event"])
    assert (row.outcome, row.customer_id) == ("applied", customer["id"])
    assert row.processed_at is not None


async def test_a_delivery_is_stored_before_its_answer_and_applied_afterwards(container, clock, write_key,
                                                                             engine) -> None:
    """The answer waits for the stored row only: until the applier runs, the row is ``received`` and the
    customer unchanged; applying it records ``applied`` and moves the customer."""
    container.applier.stop()  # nothing applies behind the test's back
    app = create_app(container)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tracker.test") as http:
        customer = await pending_customer(http, write_key)
        response = await post_blaaiz(http, clock, blaaiz_event("cus_1", "VERIFIED"))
    assert response.status_code == 200
    assert response.json()["status"] == "accepted"
    row = stored_event(engine, response.json()["event"])
    assert (row.outcome, row.processed_at, row.attempts) == ("received", None, 0)
    assert customer_rows(engine)[0]["state"] == "pending"
    assert container.applier.drain() == 1
    row = stored_event(engine, response.json()["event"])
    assert (row.outcome, row.customer_id, row.attempts) == ("applied", customer["id"], 1)
    assert row.processed_at == clock.now()
    assert customer_rows(engine)[0]["state"] == "verified"
    assert container.applier.drain() == 0  # applied once, not again


async def test_rejection_keeps_comment(client, clock, write_key, read_key) -> None:
    customer = await pending_customer(client, write_key)
    await post_blaaiz(client, clock, blaaiz_event("cus_1", "REJECTED", comment="document is cropped"))
    got = (await client.get(f"/v1/customers/{customer['id']}", headers=read_key)).json()
    assert (got["state"], got["rejection_reason"]) == ("rejected", "document is cropped")


@pytest.mark.parametrize(("event_type", "status"), [("customer.verified", "verified"),
                                                    ("customer.rejected", "rejected")])
async def test_named_events_without_new_status(client, clock, write_key, read_key, event_type, status) -> None:
    customer = await pending_customer(client, write_key)
    payload = blaaiz_event("cus_1", event_type=event_type)
    del payload["new_status"]
    response = await post_blaaiz(client, clock, payload)
    assert response.json()["status"] == "accepted"
    assert (await client.get(f"/v1/customers/{customer['id']}", headers=read_key)).json()["state"] == status


async def test_processing_starts_review_and_pending_alone_moves_nothing(client, clock, write_key, read_key,
                                                                       engine) -> None:
    customer = await register(client, write_key, "cus_2")
    response = await post_blaaiz(client, clock, blaaiz_event("cus_2", "PENDING", old_status="PENDING"))
    assert response.json()["status"] == "accepted"
    assert stored_event(engine, response.json()["event"]).outcome == "no_change"
    got = (await client.get(f"/v1/customers/{customer['id']}", headers=read_key)).json()
    assert (got["state"], got["provider_status"]) == ("awaiting_documents", "PENDING")
    clock.advance(timedelta(minutes=1))
    response = await post_blaaiz(client, clock, blaaiz_event("cus_2", "PROCESSING", old_status="PENDING",
                                                             updated_at="2026-01-05T09:31:00Z"))
    assert response.json()["status"] == "accepted"
    assert stored_event(engine, response.json()["event"]).outcome == "applied"
    got = (await client.get(f"/v1/customers/{customer['id']}", headers=read_key)).json()
    assert got["state"] == "pending"
    assert got["pending_since"] == "2026-01-05T09:01:00Z"


async def test_duplicate_event_id_changes_nothing(client, clock, write_key, engine) -> None:
    await pending_customer(client, write_key)
    payload = blaaiz_event("cus_1", "VERIFIED", event_id="evt_same")
    first = await post_blaaiz(client, clock, payload)
    before = customer_rows(engine)
    second = await post_blaaiz(client, clock, payload)
    assert (first.json()["status"], second.json()["status"]) == ("accepted", "duplicate")
    assert second.json()["event"] == first.json()["event"]  # the copy names the first delivery
    assert customer_rows(engine) == before
    with engine.connect() as conn:  # the copy is not stored again
        rows = conn.execute(select(inbound_events.c.id, inbound_events.c.outcome, inbound_events.c.duplicate_of)
                            .order_by(inbound_events.c.id)).all()
    assert [tuple(r) for r in rows] == [(first.json()["event"], "applied", None)]


async def test_same_content_under_new_event_id_is_a_duplicate(client, clock, write_key, engine) -> None:
    await pending_customer(client, write_key)
    payload = blaaiz_event("cus_1", "REJECTED", event_id="evt_a", comment="blurred")
    first = await post_blaaiz(client, clock, payload)
    assert first.json()["status"] == "accepted"
    payload["event_id"] = "evt_b"
    second = await post_blaaiz(client, clock, payload)
    assert second.json() == {"status": "duplicate", "event": first.json()["event"]}
    assert counts(engine)["history"] == 2  # submit, reject
    assert counts(engine)["events"] == 1


async def test_stale_event_is_kept_and_changes_nothing(client, clock, write_key, engine) -> None:
    await pending_customer(client, write_key)
    newer = blaaiz_event("cus_1", "REJECTED", updated_at="2026-01-05T10:00:00Z", old_status="PROCESSING")
    older = blaaiz_event("cus_1", "PROCESSING", updated_at="2026-01-05T09:45:00Z", old_status="PENDING")
    clock.advance(timedelta(hours=1, minutes=5))  # both sent before now (a time far ahead is not trusted)
    assert (await post_blaaiz(client, clock, newer)).json()["status"] == "accepted"
    before = customer_rows(engine)
    response = await post_blaaiz(client, clock, older)
    assert response.status_code == 200
    assert response.json()["status"] == "accepted"  # stored; staleness is the applier's finding
    after = customer_rows(engine)
    assert unheard(after) == unheard(before)
    assert after[0]["last_signal_at"] == clock.now()
    assert after[0]["touches"] == before[0]["touches"] + 1
    row = stored_event(engine, response.json()["event"])
    assert row.outcome == "stale"
    assert "older than the last event" in row.reason
    assert row.processed_at is not None


async def test_unknown_customer_is_discovered_not_dropped(client, clock, read_key, engine) -> None:
    response = await post_blaaiz(client, clock, blaaiz_event("cus_new", "PROCESSING", old_status="PENDING"))
    assert response.json()["status"] == "accepted"
    rows = customer_rows(engine)
    assert len(rows) == 1
    assert stored_event(engine, response.json()["event"]).customer_id == rows[0]["id"]
    assert rows[0]["provider_customer_id"] == "cus_new"
    assert rows[0]["discovered_by"] == "webhook"
    assert rows[0]["customer_type"] == "unknown"
    assert rows[0]["state"] == "pending"
    # Registering it later adopts the discovered record instead of making a second one.
    response = await client.post("/v1/customers", headers=read_key, json={})
    assert response.status_code == 403


async def test_registering_a_discovered_customer_adopts_it(client, clock, write_key, engine) -> None:
    await post_blaaiz(client, clock, blaaiz_event("cus_new", "PROCESSING", old_status="PENDING"))
    response = await client.post("/v1/customers", headers=write_key, json={
        "provider": "blaaiz", "provider_customer_id": "cus_new", "customer_type": "individual", "reference": "u-9"})
    assert response.status_code == 200
    body = response.json()
    assert (body["customer_type"], body["reference"], body["state"]) == ("individual", "u-9", "pending")
    assert counts(engine)["customers"] == 1


async def test_conflict_on_verified_is_stored_and_keeps_state(client, clock, write_key, engine) -> None:
    await pending_customer(client, write_key)
    await post_blaaiz(client, clock, blaaiz_event("cus_1", "VERIFIED", updated_at="2026-01-05T10:00:00Z"))
    before = customer_rows(engine)
    assert before[0]["state"] == "verified"
    response = await post_blaaiz(client, clock, blaaiz_event("cus_1", "REJECTED", updated_at="2026-01-05T11:00:00Z"))
    assert response.status_code == 200
    assert response.json()["status"] == "accepted"  # stored; the contradiction is the applier's finding
    assert unheard(customer_rows(engine)) == unheard(before)
    assert stored_event(engine, response.json()["event"]).outcome == "conflict"
    with engine.connect() as conn:
        raised = conn.execute(select(alerts.c.kind, alerts.c.customer_id)).all()
    assert [tuple(r) for r in raised] == [("conflict", before[0]["id"])]


async def test_email_is_not_stored(client, clock, engine) -> None:
    await post_blaaiz(client, clock, blaaiz_event("cus_1", "PROCESSING"))
    with engine.connect() as conn:
        bodies = [bytes(b) for b in conn.execute(select(inbound_events.c.body)).scalars()]
    assert bodies
    assert all(b"example.invalid" not in body and b"customer_email" not in body for body in bodies)


async def test_rotated_secret_still_accepted(client, clock) -> None:
    response = await post_blaaiz(client, clock, blaaiz_event("cus_1", "PROCESSING"), secret=OLD_SECRET)
    assert response.status_code == 200


async def test_non_customer_event_is_ignored_and_kept(client, clock, engine) -> None:
    payload = {"event_type": "collection.completed", "type": "collection", "event_id": "evt_c", "id": "tx_1"}
    response = await post_blaaiz(client, clock, payload)
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert counts(engine) == {"customers": 0, "events": 1, "history": 0}
    row = stored_event(engine, response.json()["event"])
    assert row.outcome == "ignored"
    assert row.processed_at is not None  # nothing for the applier to do


# --- bad input: a clear error, and no customer changes ------------------------------------------------


@pytest.fixture
async def baseline(client, write_key, engine) -> list[dict[str, Any]]:
    await pending_customer(client, write_key)
    return customer_rows(engine)


def _body(**changes: Any) -> bytes:
    payload = blaaiz_event("cus_1", "VERIFIED", event_id="evt_bad")
    payload.update(changes)
    return json.dumps(payload).encode()


async def _assert_refused(client, engine, baseline, response: httpx.Response, status: int, words: str,
                          stored: int = 0) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"], error
    assert customer_rows(engine) == baseline
    assert counts(engine)["events"] == stored


async def test_missing_signature(client, clock, engine, baseline) -> None:
    body = _body()
    headers = signed_headers(body, int(clock.now().timestamp()))
    del headers["x-blaaiz-signature"]
    response = await client.post("/webhooks/blaaiz", content=body, headers=headers)
    await _assert_refused(client, engine, baseline, response, 401, "missing x-blaaiz-signature")


async def test_missing_timestamp(client, clock, engine, baseline) -> None:
    body = _body()
    headers = signed_headers(body, int(clock.now().timestamp()))
    del headers["x-blaaiz-timestamp"]
    response = await client.post("/webhooks/blaaiz", content=body, headers=headers)
    await _assert_refused(client, engine, baseline, response, 401, "missing x-blaaiz-timestamp")


async def test_invalid_signature(client, clock, engine, baseline) -> None:
    body = _body()
    headers = signed_headers(body, int(clock.now().timestamp()))
    headers["x-blaaiz-signature"] = "zz" + headers["x-blaaiz-signature"][2:]
    response = await client.post("/webhooks/blaaiz", content=body, headers=headers)
    await _assert_refused(client, engine, baseline, response, 401, "does not match")


async def test_wrong_secret(client, clock, engine, baseline) -> None:
    body = _body()
    response = await client.post("/webhooks/blaaiz", content=body,
                                 headers=signed_headers(body, int(clock.now().timestamp()), "whsec_wrong"))
    await _assert_refused(client, engine, baseline, response, 401, "does not match")


async def test_tampered_body_one_byte(client, clock, engine, baseline) -> None:
    body = _body()
    headers = signed_headers(body, int(clock.now().timestamp()))
    tampered = body.replace(b"VERIFIED", b"VERIFIEE")
    assert len(tampered) == len(body)
    assert tampered != body
    response = await client.post("/webhooks/blaaiz", content=tampered, headers=headers)
    await _assert_refused(client, engine, baseline, response, 401, "does not match")


@pytest.mark.parametrize("skew", [301, -301, 86400])
async def test_timestamp_outside_window(client, clock, engine, baseline, skew: int) -> None:
    body = _body()
    response = await client.post("/webhooks/blaaiz", content=body,
                                 headers=signed_headers(body, int(clock.now().timestamp()) + skew))
    await _assert_refused(client, engine, baseline, response, 401, "outside the allowed window")


async def test_timestamp_at_window_edge_is_accepted(client, clock, engine, baseline) -> None:
    body = _body()
    response = await client.post("/webhooks/blaaiz", content=body,
                                 headers=signed_headers(body, int(clock.now().timestamp()) - 300))
    assert response.status_code == 200


async def test_invalid_json_is_stored_as_rejected(client, clock, engine, baseline) -> None:
    body = b'{"event_type": "customer.status_changed", "customer_email": "a@b.invalid", '
    response = await client.post("/webhooks/blaaiz", content=body,
                                 headers=signed_headers(body, int(clock.now().timestamp())))
    await _assert_refused(client, engine, baseline, response, 400, "not valid JSON", stored=1)
    with engine.connect() as conn:
        row = conn.execute(select(inbound_events)).one()
    assert row.outcome == "rejected"
    assert "not valid JSON" in row.reason
    assert b"a@b.invalid" not in bytes(row.body)


async def test_non_json_content_type(client, clock, engine, baseline) -> None:
    body = _body()
    headers = signed_headers(body, int(clock.now().timestamp()))
    headers["content-type"] = "application/x-www-form-urlencoded"
    response = await client.post("/webhooks/blaaiz", content=body, headers=headers)
    await _assert_refused(client, engine, baseline, response, 415, "JSON")


async def test_body_over_one_mib_declared(client, clock, engine, baseline) -> None:
    body = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'
    response = await client.post("/webhooks/blaaiz", content=body,
                                 headers=signed_headers(body, int(clock.now().timestamp())))
    await _assert_refused(client, engine, baseline, response, 413, "over 1024 KiB")


async def test_body_over_one_mib_streamed_without_length(client, clock, engine, baseline) -> None:
    """A chunked body with no Content-Length is cut off as soon as it passes the limit."""
    sent = 0

    async def chunks():  # type: ignore[no-untyped-def]
        nonlocal sent
        for _ in range(64):
            sent += 1
            yield b"x" * 65536

    headers = {"content-type": "application/json", "x-blaaiz-timestamp": str(int(clock.now().timestamp())),
               "x-blaaiz-signature": "00"}
    response = await client.post("/webhooks/blaaiz", content=chunks(), headers=headers)
    await _assert_refused(client, engine, baseline, response, 413, "over 1024 KiB")
    assert sent < 64


async def test_unknown_event_type_changes_nothing(client, clock, engine, baseline) -> None:
    response = await post_blaaiz(client, clock, json.loads(_body(event_type="customer.teleported")))
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert customer_rows(engine) == baseline
    assert stored_event(engine, response.json()["event"]).outcome == "ignored"


async def test_unknown_status_value_is_kept_raw_and_moves_nothing(client, clock, engine, baseline) -> None:
    clock.advance(timedelta(hours=1))  # past the event's updated_at
    response = await post_blaaiz(client, clock, json.loads(_body(new_status="ON_HOLD")))
    assert response.json()["status"] == "accepted"
    row = stored_event(engine, response.json()["event"])
    assert row.outcome == "no_change"
    assert "undocumented status 'ON_HOLD'" in row.reason
    rows = customer_rows(engine)
    assert rows[0]["state"] == "pending"
    assert rows[0]["provider_status"] == "ON_HOLD"
    assert json.loads(rows[0]["flags"]) == ["unknown_status:ON_HOLD"]


@pytest.mark.parametrize("field", ["customer_id", "event_type"])
async def test_missing_field_is_stored_as_rejected(client, clock, engine, baseline, field: str) -> None:
    payload = json.loads(_body())
    del payload[field]
    response = await post_blaaiz(client, clock, payload)
    await _assert_refused(client, engine, baseline, response, 400, f"missing field {field}", stored=1)


async def test_json_array_body_is_rejected(client, clock, engine, baseline) -> None:
    response = await post_blaaiz(client, clock, [1, 2])
    await _assert_refused(client, engine, baseline, response, 400, "JSON object", stored=1)


async def test_no_secret_configured_refuses_everything(database_url, clock) -> None:
    from tests.conftest import make_settings
    from tracker.bootstrap import build

    container = build(make_settings(database_url, blaaiz_webhook_secrets=()), clock)
    container.start()
    try:
        async with httpx.AsyncClient(transport=AppliedTransport(create_app(container), container),
                                     base_url="http://t") as http:
            response = await post_blaaiz(http, clock, blaaiz_event())
        assert response.status_code == 401
        assert "TRACKER_BLAAIZ_WEBHOOK_SECRETS" in response.json()["error"]["message"]
        assert counts(container.engine) == {"customers": 0, "events": 0, "history": 0}
    finally:
        container.stop()
        container.engine.dispose()


async def test_tolerance_zero_turns_the_window_off(database_url, clock) -> None:
    from tests.conftest import make_settings
    from tracker.bootstrap import build

    container = build(make_settings(database_url, blaaiz_webhook_tolerance=0), clock)
    container.start()
    try:
        async with httpx.AsyncClient(transport=AppliedTransport(create_app(container), container),
                                     base_url="http://t") as http:
            body = json.dumps(blaaiz_event()).encode()
            response = await http.post("/webhooks/blaaiz", content=body, headers=signed_headers(body, 1_000_000))
        assert response.status_code == 200
        assert response.json()["status"] == "accepted"
        assert stored_event(container.engine, response.json()["event"]).outcome == "applied"
    finally:
        container.stop()
        container.engine.dispose()


@pytest.mark.parametrize("url", ["postgresql://postgres@127.0.0.1:9/unreachable",
                                 "sqlite:////nonexistent-dir/for/tracker.db"])
async def test_database_unavailable_answers_503(clock, url: str) -> None:
    """When the write cannot happen, the provider is told to retry (503), never 500 and never 200."""
    from tests.conftest import make_settings
    from tracker.bootstrap import build

    container = build(make_settings(url), clock)
    container.start()
    try:
        # A plain transport: there is nothing to apply, and no database to apply it in.
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(container)),
                                     base_url="http://t") as http:
            response = await post_blaaiz(http, clock, blaaiz_event("cus_9", "PROCESSING"))
            ready = await http.get("/readyz")
        assert response.status_code == 503
        assert response.headers["retry-after"]
        assert response.json()["error"]["code"] == "database_unavailable"
        assert ready.status_code == 503
    finally:
        container.stop()
        container.engine.dispose()


def test_fake_clock_is_what_the_app_uses(clock: FakeClock) -> None:
    assert clock.now().year == 2026


async def test_different_non_customer_events_are_not_duplicates(client, clock) -> None:
    first = {"event_type": "collection.completed", "type": "collection", "event_id": "evt_1", "id": "tx_1"}
    second = {**first, "event_id": "evt_2", "id": "tx_2"}
    assert (await post_blaaiz(client, clock, first)).json()["status"] == "ignored"
    assert (await post_blaaiz(client, clock, second)).json()["status"] == "ignored"
    assert (await post_blaaiz(client, clock, {**second, "event_id": "evt_3"})).json()["status"] == "duplicate"


async def test_an_escaped_lone_surrogate_is_refused_as_unreadable_and_stored(client, clock, engine, baseline
                                                                             ) -> None:
    """Valid JSON to the standard library, but not text: 400 and stored as rejected, never a 500."""
    body = json.dumps(blaaiz_event("cus_1", "REJECTED", comment="PLACEHOLDER")).encode()
    body = body.replace(b"PLACEHOLDER", b"blurred \\ud800 scan")
    response = await post_blaaiz(client, clock, body)
    await _assert_refused(client, engine, baseline, response, 400, "unpaired UTF-16 surrogate", stored=1)
    with engine.connect() as conn:
        row = conn.execute(select(inbound_events)).one()
    assert row.outcome == "rejected"
    assert b"someone@example.invalid" not in bytes(row.body)


@pytest.mark.parametrize(("field", "event"), [
    ("event_id", lambda: blaaiz_event("cus_1", "PROCESSING", event_id="e" * 129)),
    ("customer id", lambda: blaaiz_event("c" * 129, "PROCESSING")),
    ("status", lambda: blaaiz_event("cus_1", "X" * 65)),
    ("event_type", lambda: {**blaaiz_event("cus_1", "PROCESSING"), "event_type": "t" * 65}),
], ids=["event_id", "customer_id", "status", "event_type"])
async def test_a_field_longer_than_the_tracker_stores_is_refused_and_the_next_delivery_goes_through(
        client, clock, engine, baseline, field: str, event: Any) -> None:
    """On PostgreSQL such a row would fail its whole batch, again at every retry; SQLite would take it."""
    response = await post_blaaiz(client, clock, event())
    await _assert_refused(client, engine, baseline, response, 400, f"{field} is ", stored=1)
    assert "stores at most" in response.json()["error"]["message"]
    after = await post_blaaiz(client, clock, blaaiz_event("cus_after", "PROCESSING", event_id="e" * 128))
    assert after.json()["status"] == "accepted"


@pytest.mark.parametrize(("field", "event"), [
    ("comment", lambda: blaaiz_event("cus_1", "REJECTED", comment="blurred\u0000scan")),
    ("customer id", lambda: blaaiz_event("cus\u0000x", "PROCESSING")),
    ("event_id", lambda: blaaiz_event("cus_1", "PROCESSING", event_id="evt\u0000")),
], ids=["comment", "customer_id", "event_id"])
async def test_a_nul_character_is_refused_and_the_next_delivery_goes_through(
        client, clock, engine, baseline, field: str, event: Any) -> None:
    """PostgreSQL's text cannot hold NUL: such a row would fail its whole batch, at every retry."""
    response = await post_blaaiz(client, clock, event())
    await _assert_refused(client, engine, baseline, response, 400, f"{field} contains a NUL character", stored=1)
    after = await post_blaaiz(client, clock, blaaiz_event("cus_after", "PROCESSING"))
    assert after.json()["status"] == "accepted"


def delivery_of(clock: FakeClock, payload: dict[str, Any], headers: dict[str, Any] | None = None) -> Delivery:
    """What the web layer hands the inbox for ``payload``."""
    return Delivery("blaaiz", clock.now(), json.dumps(payload).encode(), headers or {}, blaaiz.parse(payload))


async def in_one_batch(writer: InboxWriter, deliveries: list[Delivery], release: threading.Event
                       ) -> list[Receipt | BaseException]:
    """Submit ``deliveries``: the first alone, then the others while ``writer``'s thread is held after storing
    the first (its ``on_stored`` waits for ``release``), so they queue up and it takes them all in one batch."""
    try:
        first: Receipt | BaseException = await writer.submit(deliveries[0])
    except DatabaseUnavailable as exc:
        first = exc

    async def let_go() -> None:  # runs once every submit before it has queued its delivery
        release.set()

    results = await asyncio.gather(*(writer.submit(d) for d in deliveries[1:]), let_go(), return_exceptions=True)
    return [first, *results[:-1]]


def holding_writer(engine: Engine) -> tuple[InboxWriter, list[int], threading.Event]:
    """An inbox writer whose thread, after its first batch, waits for the returned event; ``stored`` counts its
    batches (one ``on_stored`` each)."""
    stored: list[int] = []
    release = threading.Event()

    def on_stored() -> None:
        stored.append(1)
        if len(stored) == 1:
            assert release.wait(10), "the test never released the writer"

    writer = InboxWriter(engine, on_stored=on_stored)
    writer.start()
    return writer, stored, release


async def test_a_delivery_that_cannot_be_stored_fails_alone_not_its_whole_batch(container: Container, clock
                                                                                 ) -> None:
    """Something in one delivery (here a header value that cannot be written, as a bug might produce) fails
    the whole batch's store: the others are stored one at a time and answered; only that one is told to retry
    (503), and nothing of the others is lost."""
    writer, stored, release = holding_writer(container.engine)
    deliveries = [delivery_of(clock, blaaiz_event("cus_first", "PROCESSING"))]
    deliveries += [delivery_of(clock, blaaiz_event(f"cus_batch_{n}", "PROCESSING"),
                               {"user-agent": object()} if n == 2 else None) for n in range(5)]
    try:
        results = await in_one_batch(writer, deliveries, release)
    finally:
        release.set()
        writer.stop()
    assert len(stored) == 2  # the first delivery, then the other five together
    bad = results[3]
    assert isinstance(bad, DatabaseUnavailable)
    assert "retry later" in bad.message
    good = [r for n, r in enumerate(results) if n != 3]
    assert all(isinstance(r, Receipt) for r in good)
    assert [r.status for r in good] == ["accepted"] * 5  # type: ignore[union-attr]
    with container.engine.connect() as conn:
        kept = dict(conn.execute(select(inbound_events.c.id, inbound_events.c.provider_customer_id)).all())
    assert kept == {r.event_id: d.parsed.provider_customer_id  # type: ignore[union-attr]
                    for r, d in zip(results, deliveries, strict=True) if isinstance(r, Receipt)}
    assert "cus_batch_2" not in kept.values()


async def test_copies_in_one_batch_are_stored_once_and_answered_with_the_first(container: Container, clock
                                                                                ) -> None:
    """A provider retrying quickly can have two copies of a delivery in one batch (same event id; or the same
    content under another id): one row, and each copy's answer names it."""
    writer, stored, release = holding_writer(container.engine)
    payload = blaaiz_event("cus_copy", "PROCESSING", event_id="evt_copy")
    deliveries = [delivery_of(clock, blaaiz_event("cus_first", "PROCESSING")), delivery_of(clock, payload),
                  delivery_of(clock, payload), delivery_of(clock, {**payload, "event_id": "evt_copy_2"})]
    try:
        results = await in_one_batch(writer, deliveries, release)
    finally:
        release.set()
        writer.stop()
    assert len(stored) == 2  # the first delivery, then the other three together
    assert all(isinstance(r, Receipt) for r in results), results
    first, original, copy, same_content = results
    assert (original.status, copy.status, same_content.status) == (  # type: ignore[union-attr]
        "accepted", "duplicate", "duplicate")
    assert copy.event_id == same_content.event_id == original.event_id  # type: ignore[union-attr]
    with container.engine.connect() as conn:
        kept = conn.execute(select(inbound_events.c.id, inbound_events.c.event_id).order_by(inbound_events.c.id)
                            ).all()
    assert [tuple(r) for r in kept] == [(first.event_id, deliveries[0].parsed.event_id),  # type: ignore[union-attr]
                                        (original.event_id, "evt_copy")]  # type: ignore[union-attr]


@pytest.mark.parametrize("url", ["postgresql://postgres@127.0.0.1:9/unreachable",
                                 "sqlite:////nonexistent-dir/for/tracker.db"], ids=["postgresql", "sqlite"])
async def test_an_unreachable_database_fails_the_batch_without_one_at_a_time_retries(clock, url: str) -> None:
    """Storing one at a time helps only when the batch held the fault; a database that cannot be written at all
    would be asked once per delivery (each waiting its busy timeout or connect timeout). Every sender is told
    to retry (503)."""
    engine = make_engine(url)
    connects: list[int] = []
    event.listen(engine, "do_connect", lambda *args: connects.append(1))
    writer, stored, release = holding_writer(engine)
    deliveries = [delivery_of(clock, blaaiz_event(f"cus_down_{n}", "PROCESSING")) for n in range(4)]
    try:
        results = await in_one_batch(writer, deliveries, release)
    finally:
        release.set()
        writer.stop()
        engine.dispose()
    assert len(stored) == 2  # the first delivery alone, then the other three together
    assert all(isinstance(r, DatabaseUnavailable) for r in results), results
    assert {r.message for r in results} == {  # type: ignore[union-attr]
        "the database cannot take the write right now; retry later"}
    assert len(connects) == 2  # one attempt for the first delivery, one for the batch: none per delivery


def test_conflicts_and_undocumented_statuses_in_one_batch_alert_once_each_with_their_notices(
        container: Container, clock) -> None:
    """A provider's bad day brings many contradictions at once: one apply batch raises them all, one alert per
    contradiction, one per customer and undocumented value, each with a notice on every channel, the alerts
    naming the customers as the batch left them."""
    from tracker.db.tables import notifications

    def delivery(pcid: str, status: str, n: int) -> Delivery:
        return delivery_of(clock, blaaiz_event(pcid, status, updated_at=f"2026-01-05T1{n}:00:00Z"))

    container.applier.stop()  # the test applies, in the batches it means
    store_now(container.engine, [delivery(f"cus_v{n}", "VERIFIED", 0) for n in range(3)])
    container.applier.drain()
    with container.engine.begin() as conn:  # what a registration would have set: the notice names it
        conn.execute(customers.update().where(customers.c.provider_customer_id == "cus_v1").values(
            reference="user-v1"))
    receipts = store_now(container.engine, [*(delivery(f"cus_v{n}", "REJECTED", 1) for n in range(3)),
                                        delivery("cus_v0", "ON_HOLD", 2), delivery("cus_v0", "ON_HOLD", 3),
                                        delivery("cus_u", "ON_HOLD", 2)])
    assert [r.status for r in receipts] == ["accepted"] * 6
    assert container.applier.apply_pending() == 6  # one batch
    with container.engine.connect() as conn:
        recorded = dict(conn.execute(select(inbound_events.c.id, inbound_events.c.outcome)).all())
        raised = conn.execute(select(alerts.c.kind, alerts.c.customer_id, alerts.c.id).order_by(alerts.c.id)).all()
        notices = conn.execute(select(notifications.c.alert_id, notifications.c.channel)).all()
        payloads = [json.loads(p) for p in conn.execute(select(notifications.c.payload)).scalars()]
        by_pcid = dict(conn.execute(select(customers.c.provider_customer_id, customers.c.id)).all())
    assert [recorded[r.event_id] for r in receipts] == ["conflict"] * 3 + ["no_change"] * 3
    assert sorted(kind for kind, _, _ in raised) == ["conflict"] * 3 + ["unknown_status"] * 2
    assert {(kind, customer) for kind, customer, _ in raised if kind == "unknown_status"} == {
        ("unknown_status", by_pcid["cus_v0"]), ("unknown_status", by_pcid["cus_u"])}
    channels = container.writes.alerts.channels
    assert sorted(notices) == sorted((alert_id, channel) for _, _, alert_id in raised for channel in channels)
    conflict = [p for p in payloads if p["kind"] == "conflict" and p["provider_customer_id"] == "cus_v1"]
    assert [(p["customer_id"], p["reference"]) for p in conflict] == [(by_pcid["cus_v1"], "user-v1")] * len(channels)


def test_raise_alerts_refuses_tier_alerts_which_may_fold_into_an_incident(container: Container, clock) -> None:
    with container.engine.begin() as conn, pytest.raises(ValueError, match="raise_alert"):
        raise_alerts(conn, container.writes.alerts, [NewAlert("customer:1:attempt:1:overdue", "overdue", "blaaiz",
                                                              "late")], clock.now())
    with container.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(alerts)).scalar_one() == 0
