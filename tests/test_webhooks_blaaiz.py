"""POST /webhooks/blaaiz: signatures, answers, duplicates, stale events, discovery, bad input."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event, func, select

from tests.conftest import OLD_SECRET, blaaiz_event, post_blaaiz, register, signed_headers
from tracker.alerts import NewAlert, raise_alerts
from tracker.bootstrap import Container
from tracker.clock import FakeClock
from tracker.db.tables import customers, history, inbound_events
from tracker.errors import DatabaseUnavailable
from tracker.ingest import Delivery, _Writer
from tracker.providers import blaaiz
from tracker.web.app import create_app


@pytest.fixture(params=["fast", "full"])
async def client(container: Container, request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """Every test here runs through the webhook fast path (tracker.web.fastpath) and through the full route."""
    app = create_app(container, fast_webhooks=request.param == "fast")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tracker.test") as http:
        yield http


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                for name, table in (("customers", customers), ("events", inbound_events), ("history", history))}


def customer_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(customers).order_by(customers.c.id))]


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


async def test_processing_starts_review_and_pending_alone_moves_nothing(client, clock, write_key, read_key) -> None:
    customer = await register(client, write_key, "cus_2")
    response = await post_blaaiz(client, clock, blaaiz_event("cus_2", "PENDING", old_status="PENDING"))
    assert response.json()["status"] == "ignored"
    got = (await client.get(f"/v1/customers/{customer['id']}", headers=read_key)).json()
    assert (got["state"], got["provider_status"]) == ("awaiting_documents", "PENDING")
    clock.advance(timedelta(minutes=1))
    response = await post_blaaiz(client, clock, blaaiz_event("cus_2", "PROCESSING", old_status="PENDING",
                                                             updated_at="2026-01-05T09:31:00Z"))
    assert response.json()["status"] == "accepted"
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
    assert customer_rows(engine) == before
    with engine.connect() as conn:
        rows = conn.execute(select(inbound_events.c.outcome, inbound_events.c.duplicate_of)
                            .order_by(inbound_events.c.id)).all()
    assert [tuple(r) for r in rows] == [("accepted", None), ("duplicate", first.json()["event"])]


async def test_same_content_under_new_event_id_is_a_duplicate(client, clock, write_key, engine) -> None:
    await pending_customer(client, write_key)
    payload = blaaiz_event("cus_1", "REJECTED", event_id="evt_a", comment="blurred")
    assert (await post_blaaiz(client, clock, payload)).json()["status"] == "accepted"
    payload["event_id"] = "evt_b"
    assert (await post_blaaiz(client, clock, payload)).json()["status"] == "duplicate"
    assert counts(engine)["history"] == 2  # submit, reject


async def test_stale_event_is_kept_and_changes_nothing(client, clock, write_key, engine) -> None:
    await pending_customer(client, write_key)
    newer = blaaiz_event("cus_1", "REJECTED", updated_at="2026-01-05T10:00:00Z", old_status="PROCESSING")
    older = blaaiz_event("cus_1", "PROCESSING", updated_at="2026-01-05T09:45:00Z", old_status="PENDING")
    assert (await post_blaaiz(client, clock, newer)).json()["status"] == "accepted"
    before = customer_rows(engine)
    response = await post_blaaiz(client, clock, older)
    assert response.json()["status"] == "stale"
    assert customer_rows(engine) == before
    with engine.connect() as conn:
        row = conn.execute(select(inbound_events).where(inbound_events.c.id == response.json()["event"])).one()
    assert row.outcome == "stale"
    assert "older than the last event" in row.reason


async def test_unknown_customer_is_discovered_not_dropped(client, clock, read_key, engine) -> None:
    response = await post_blaaiz(client, clock, blaaiz_event("cus_new", "PROCESSING", old_status="PENDING"))
    assert response.json()["status"] == "accepted"
    rows = customer_rows(engine)
    assert len(rows) == 1
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
    response = await post_blaaiz(client, clock, blaaiz_event("cus_1", "REJECTED", updated_at="2026-01-05T11:00:00Z"))
    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert customer_rows(engine) == before
    with engine.connect() as conn:
        outcome = conn.execute(select(inbound_events.c.outcome).where(
            inbound_events.c.id == response.json()["event"])).scalar_one()
    assert outcome == "conflict"


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


async def test_unknown_status_value_is_kept_raw_and_moves_nothing(client, clock, engine, baseline) -> None:
    response = await post_blaaiz(client, clock, json.loads(_body(new_status="ON_HOLD")))
    assert response.json()["status"] == "ignored"
    rows = customer_rows(engine)
    assert rows[0]["state"] == "pending"
    assert rows[0]["provider_status"] == "ON_HOLD"


@pytest.mark.parametrize("field", ["customer_id", "event_type"])
async def test_missing_field_is_stored_as_rejected(client, clock, engine, baseline, field: str) -> None:
    payload = json.loads(_body())
    del payload[field]
    response = await post_blaaiz(client, clock, payload)
    await _assert_refused(client, engine, baseline, response, 400, f"missing field {field}", stored=1)


async def test_json_array_body_is_rejected(client, clock, engine, baseline) -> None:
    response = await post_blaaiz(client, clock, [1, 2])
    await _assert_refused(client, engine, baseline, response, 400, "JSON object", stored=1)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "full"])
async def test_no_secret_configured_refuses_everything(database_url, clock, fast: bool) -> None:
    from tests.conftest import make_settings
    from tracker.bootstrap import build

    container = build(make_settings(database_url, blaaiz_webhook_secrets=()), clock)
    container.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(container, fast_webhooks=fast)),
                                     base_url="http://t") as http:
            response = await post_blaaiz(http, clock, blaaiz_event())
        assert response.status_code == 401
        assert "TRACKER_BLAAIZ_WEBHOOK_SECRETS" in response.json()["error"]["message"]
    finally:
        container.stop()
        container.engine.dispose()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "full"])
async def test_tolerance_zero_turns_the_window_off(database_url, clock, fast: bool) -> None:
    from tests.conftest import make_settings
    from tracker.bootstrap import build

    container = build(make_settings(database_url, blaaiz_webhook_tolerance=0), clock)
    container.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(container, fast_webhooks=fast)),
                                     base_url="http://t") as http:
            body = json.dumps(blaaiz_event()).encode()
            response = await http.post("/webhooks/blaaiz", content=body, headers=signed_headers(body, 1_000_000))
        assert response.status_code == 200
    finally:
        container.stop()
        container.engine.dispose()


@pytest.mark.parametrize("url", ["postgresql://postgres@127.0.0.1:9/unreachable",
                                 "sqlite:////nonexistent-dir/for/tracker.db"])
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "full"])
async def test_database_unavailable_answers_503(clock, url: str, fast: bool) -> None:
    """When the write cannot happen, the provider is told to retry (503), never 500 and never 200."""
    from tests.conftest import make_settings
    from tracker.bootstrap import build

    container = build(make_settings(url), clock)
    container.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(container, fast_webhooks=fast)),
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


def test_the_sqlite_writer_checkpoints_the_wal_after_every_batch(container: Container, clock, engine) -> None:
    """A checkpoint after each batch keeps the WAL to one batch's pages (tracker.ingest._Writer): the next
    transaction starts the WAL afresh, so a longer interval would leave several batches' frames in it."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's WAL")
    writer = _Writer(container.ingestor)

    def batch(pcid: str) -> None:
        payload = blaaiz_event(pcid, "PROCESSING")
        delivery = Delivery("blaaiz", clock.now(), json.dumps(payload).encode(), {}, blaaiz.parse(payload))
        assert writer.ingest([delivery])[0].outcome == "accepted"
        writer.between_batches()

    def frames() -> int:
        raw = sqlite3.connect(str(engine.url.database))
        try:
            busy, log, _ = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            raw.close()
        assert busy == 0
        return int(log)

    try:
        batch("cus_wal_0")
        one_batch = frames()
        for n in range(1, 6):
            batch(f"cus_wal_{n}")
        assert 0 < frames() < 2 * one_batch
    finally:
        writer.close()


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


async def test_a_delivery_that_cannot_be_stored_fails_alone_not_its_whole_batch(container: Container, clock
                                                                                 ) -> None:
    """Something in one delivery (here a header value that is not text, as a bug might produce) fails the
    batch's transaction: the others are stored one at a time and answered; only that one is told to retry."""
    committer = container.committer
    writer = _Writer(container.ingestor)
    loop = asyncio.get_running_loop()

    def delivery(pcid: str, headers: dict[str, Any]) -> Delivery:
        payload = blaaiz_event(pcid, "PROCESSING")
        return Delivery("blaaiz", clock.now(), json.dumps(payload).encode(), headers, blaaiz.parse(payload))

    batch = [(delivery(f"cus_batch_{n}", {"user-agent": object()} if n == 2 else {}), loop.create_future())
             for n in range(5)]
    try:
        await asyncio.to_thread(committer._commit, writer, batch)
        outcomes = [await asyncio.gather(future, return_exceptions=True) for _, future in batch]
    finally:
        writer.close()
    results = [outcome[0] for outcome in outcomes]
    assert isinstance(results[2], DatabaseUnavailable)
    assert [r.outcome for n, r in enumerate(results) if n != 2] == ["accepted"] * 4
    with container.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(inbound_events)).scalar_one() == 4


def test_an_unreachable_or_locked_database_fails_the_batch_without_one_at_a_time_retries(container: Container
                                                                                          ) -> None:
    """Storing one at a time helps only when the batch held the fault; a database that cannot be written at all
    would be asked once per delivery (each waiting its busy timeout or connect timeout)."""
    from sqlalchemy.exc import OperationalError, StatementError

    dbapi = container.engine.dialect.loaded_dbapi

    def raised(exc: BaseException) -> BaseException:
        try:
            try:
                raise exc
            except BaseException as inner:
                raise DatabaseUnavailable("the database cannot take the write right now") from inner
        except DatabaseUnavailable as outer:
            return outer

    committer = container.committer
    assert committer._environmental(raised(OperationalError("BEGIN", {}, dbapi.OperationalError("locked"))))
    assert committer._environmental(raised(dbapi.OperationalError("connection refused")))
    assert not committer._environmental(raised(StatementError("bad value", "INSERT", {}, ValueError("NUL"))))
    assert not committer._environmental(raised(TypeError("not JSON serializable")))


def test_conflicts_and_undocumented_statuses_in_one_batch_alert_once_each_with_their_notices(
        container: Container, clock) -> None:
    """A provider's bad day brings many contradictions at once: the batch raises them all (tracker.alerts.
    raise_alerts, two statements however many), one alert per contradiction, one per customer and undocumented
    value, each with a notice on every channel. The writer raises them on its own cursor (its pipeline on
    PostgreSQL); through SQLAlchemy goes only the rare write of a customer's new flags."""
    from tracker.db.tables import alerts, notifications

    def delivery(pcid: str, status: str, n: int) -> Delivery:
        payload = blaaiz_event(pcid, status, updated_at=f"2026-01-05T1{n}:00:00Z")
        return Delivery("blaaiz", clock.now(), json.dumps(payload).encode(), {}, blaaiz.parse(payload))

    ingestor = container.ingestor
    ingestor.ingest([delivery(f"cus_v{n}", "VERIFIED", 0) for n in range(3)])
    with container.engine.begin() as conn:  # what a registration would have set: the notice names it
        conn.execute(customers.update().where(customers.c.provider_customer_id == "cus_v1").values(
            reference="user-v1"))
    through_sqlalchemy: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        through_sqlalchemy.append(statement.split()[0].upper() + " " + statement.split()[1])

    event.listen(container.engine, "before_cursor_execute", count)
    try:
        results = ingestor.ingest([*(delivery(f"cus_v{n}", "REJECTED", 1) for n in range(3)),
                                   delivery("cus_v0", "ON_HOLD", 2), delivery("cus_v0", "ON_HOLD", 3),
                                   delivery("cus_u", "ON_HOLD", 2)])
    finally:
        event.remove(container.engine, "before_cursor_execute", count)
    # No alert or notice through SQLAlchemy, and no read: the alerts name the customers as the batch wrote them.
    assert [s for s in through_sqlalchemy if s != "BEGIN IMMEDIATE"] == ["UPDATE customers"]  # the new flags
    assert [r.outcome for r in results[:3]] == ["conflict"] * 3
    with container.engine.connect() as conn:
        raised = conn.execute(select(alerts.c.kind, alerts.c.customer_id, alerts.c.id).order_by(alerts.c.id)).all()
        notices = conn.execute(select(notifications.c.alert_id, notifications.c.channel)).all()
    assert sorted(kind for kind, _, _ in raised) == ["conflict"] * 3 + ["unknown_status"] * 2
    assert len({(kind, customer) for kind, customer, _ in raised if kind == "unknown_status"}) == 2
    channels = container.effects.alerts.channels
    assert sorted(notices) == sorted((alert_id, channel) for _, _, alert_id in raised for channel in channels)
    with container.engine.connect() as conn:
        payloads = [json.loads(p) for p in conn.execute(select(notifications.c.payload)).scalars()]
        by_pcid = dict(conn.execute(select(customers.c.provider_customer_id, customers.c.id)).all())
    conflict = [p for p in payloads if p["kind"] == "conflict" and p["provider_customer_id"] == "cus_v1"]
    assert [(p["customer_id"], p["reference"]) for p in conflict] == [(by_pcid["cus_v1"], "user-v1")]


def test_raise_alerts_refuses_tier_alerts_which_may_fold_into_an_incident(container: Container, clock) -> None:
    with container.engine.begin() as conn, pytest.raises(ValueError, match="raise_alert"):
        raise_alerts(conn, container.effects.alerts, [NewAlert("customer:1:attempt:1:overdue", "overdue", "blaaiz",
                                                               "late")], clock.now())
