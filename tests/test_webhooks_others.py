"""POST /webhooks/connectfi/{token} and POST /webhooks/cryptopocket: same answers and rules as Blaaiz.

The client drains the applier after every webhook (``tests.conftest.AppliedTransport``), so a test reads the
applied effect right after the answer.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.conftest import AppliedTransport, make_settings
from tracker.bootstrap import Container, build
from tracker.clock import FakeClock
from tracker.db.tables import customers, inbound_events
from tracker.providers.simulators import ConnectFiSimulator, CryptoPocketSimulator
from tracker.web.app import create_app

TOKEN = "cf-path-token-123"
KEY, SECRET = "sim-cryptopocket-key", "sim-cryptopocket-secret"


@pytest.fixture
async def app_client(database_url: str, clock: FakeClock) -> AsyncIterator[tuple[httpx.AsyncClient, Container]]:
    """A client of an app configured for connectFi's path token and CryptoPocket's signatures."""
    settings = make_settings(database_url, connectfi_webhook_token=TOKEN, cryptopocket_api_key=KEY,
                             cryptopocket_api_secret=SECRET)
    container = build(settings, clock)
    container.start()
    try:
        async with httpx.AsyncClient(transport=AppliedTransport(create_app(container), container),
                                     base_url="http://tracker.test") as client:
            yield client, container
    finally:
        container.stop()
        await container.http.aclose()
        container.engine.dispose()


def stored(container: Container) -> int:
    with container.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(inbound_events)).scalar_one())


def customer(container: Container, pcid: str) -> Any:
    with container.engine.connect() as conn:
        return conn.execute(select(customers).where(customers.c.provider_customer_id == pcid)).one_or_none()


def stored_event(container: Container, event_id: int) -> Any:
    """The inbox row a webhook's answer names."""
    with container.engine.connect() as conn:
        return conn.execute(select(inbound_events).where(inbound_events.c.id == event_id)).one()


# --- connectFi ---------------------------------------------------------------------------------------


@pytest.fixture
def connectfi(clock: FakeClock) -> ConnectFiSimulator:
    sim = ConnectFiSimulator(clock=clock)
    sim.add_application("app_1", "cf_cust_1", "waiting_review", reference="ref-1")
    return sim


async def post_cf(client: httpx.AsyncClient, body: bytes, token: str = TOKEN) -> httpx.Response:
    return await client.post(f"/webhooks/connectfi/{token}", content=body, headers={"content-type": "application/json"})


async def test_connectfi_callback_moves_the_customer(app_client, connectfi) -> None:
    client, container = app_client
    response = await post_cf(client, connectfi.callback("app_1"))
    assert response.status_code == 200
    assert response.json()["status"] == "accepted"
    row = customer(container, "cf_cust_1")
    assert (row.state, row.provider_status, row.discovered_by, row.customer_type) == (
        "pending", "waiting_review", "webhook", "unknown")
    event = stored_event(container, response.json()["event"])
    assert (event.provider, event.outcome, event.customer_id) == ("connectfi", "applied", row.id)
    connectfi.set_status("app_1", "completed", outcome="declined")
    response = await post_cf(client, connectfi.callback("app_1"))
    assert response.json()["status"] == "accepted"
    row = customer(container, "cf_cust_1")
    assert (row.state, row.rejection_reason) == ("rejected", "declined")
    assert stored_event(container, response.json()["event"]).outcome == "applied"


async def test_a_connectfi_callback_gives_its_customer_the_application_to_poll_by(app_client, connectfi) -> None:
    """connectFi is polled by application id: a customer first heard of by callback, or registered without one,
    learns it from the callback, so the poll that follows a move can be made."""
    client, container = app_client
    await post_cf(client, connectfi.callback("app_1"))
    row = customer(container, "cf_cust_1")
    assert (row.application_id, row.state) == ("app_1", "pending")
    assert row.next_poll_at is not None
    registered = await client.post("/v1/customers", headers={
        "authorization": f"Bearer {container.api_keys.create('cf-writer', 'write')}"}, json={
        "provider": "connectfi", "provider_customer_id": "cf_cust_2", "customer_type": "individual"})
    assert registered.json()["application_id"] is None
    connectfi.add_application("app_2", "cf_cust_2", "waiting_review")
    await post_cf(client, connectfi.callback("app_2"))
    row = customer(container, "cf_cust_2")
    assert (row.application_id, row.state, row.customer_type) == ("app_2", "pending", "individual")
    assert row.next_poll_at is not None


async def test_connectfi_duplicates_on_application_status_outcome(app_client, connectfi) -> None:
    client, container = app_client
    first = json.loads(connectfi.callback("app_1"))
    again = {**first, "requestId": "another-request"}
    accepted = await post_cf(client, json.dumps(first).encode())
    assert accepted.json()["status"] == "accepted"
    duplicate = await post_cf(client, json.dumps(again).encode())
    assert duplicate.json() == {"status": "duplicate", "event": accepted.json()["event"]}
    assert stored(container) == 1


async def test_connectfi_wrong_token_is_401_and_stores_nothing(app_client, connectfi) -> None:
    client, container = app_client
    response = await post_cf(client, connectfi.callback("app_1"), token="guess")
    assert response.status_code == 401
    assert "token" in response.json()["error"]["message"]
    assert stored(container) == 0


async def test_connectfi_bad_inputs(app_client) -> None:
    client, container = app_client
    missing = await post_cf(client, json.dumps({"code": "0", "data": {"status": "running"}}).encode())
    assert missing.status_code == 400
    assert "customerId" in missing.json()["error"]["message"]
    broken = await post_cf(client, b"{nope")
    assert broken.status_code == 400
    wrong_type = await client.post(f"/webhooks/connectfi/{TOKEN}", content=b"x", headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 415
    big = await post_cf(client, b"{" + b" " * (1024 * 1024 + 1) + b"}")
    assert big.status_code == 413
    assert stored(container) == 2  # the two unreadable ones, kept as rejected
    with container.engine.connect() as conn:
        kept = conn.execute(select(inbound_events.c.provider, inbound_events.c.outcome, inbound_events.c.reason)
                            .order_by(inbound_events.c.id)).all()
    assert [(provider, outcome) for provider, outcome, _ in kept] == [("connectfi", "rejected")] * 2
    assert "customerId" in kept[0].reason
    assert "not valid JSON" in kept[1].reason
    assert customer(container, "cf_cust_1") is None


async def test_connectfi_without_configured_token_refuses(database_url, clock, connectfi) -> None:
    container = build(make_settings(database_url), clock)
    container.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(container)),
                                     base_url="http://t") as client:
            response = await post_cf(client, connectfi.callback("app_1"))
        assert response.status_code == 401
        assert "TRACKER_CONNECTFI_WEBHOOK_TOKEN" in response.json()["error"]["message"]
        assert stored(container) == 0
    finally:
        container.stop()
        await container.http.aclose()
        container.engine.dispose()


# --- CryptoPocket ------------------------------------------------------------------------------------


@pytest.fixture
def pocket(clock: FakeClock) -> CryptoPocketSimulator:
    sim = CryptoPocketSimulator(clock=clock)
    sim.add_customer("usr_1", "unused")
    return sim


@pytest.mark.parametrize("encoding", ["hex", "base64"])
async def test_cryptopocket_signed_webhook(app_client, pocket, encoding: str) -> None:
    client, container = app_client
    body, headers = pocket.webhook("usr_1", "processing", encoding=encoding)
    response = await client.post("/webhooks/cryptopocket", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "accepted"
    row = customer(container, "usr_1")
    assert (row.state, row.discovered_by, row.customer_type) == ("pending", "webhook", "unknown")
    assert stored_event(container, response.json()["event"]).outcome == "applied"
    again = await client.post("/webhooks/cryptopocket", content=body, headers=headers)
    assert again.json() == {"status": "duplicate", "event": response.json()["event"]}
    assert stored(container) == 1


async def test_cryptopocket_refusals(app_client, pocket, clock) -> None:
    client, container = app_client
    body, headers = pocket.webhook("usr_1", "valid")
    tampered = body.replace(b"valid", b"vaLid")
    assert (await client.post("/webhooks/cryptopocket", content=tampered, headers=headers)).status_code == 401
    wrong_key = {**headers, "X-API-Key": "someone-else"}
    assert (await client.post("/webhooks/cryptopocket", content=body, headers=wrong_key)).status_code == 401
    old_body, old_headers = pocket.webhook("usr_1", "valid", timestamp=int((clock.now() - timedelta(minutes=6))
                                                                          .timestamp()))
    old = await client.post("/webhooks/cryptopocket", content=old_body, headers=old_headers)
    assert old.status_code == 401
    assert "5 minutes" in old.json()["error"]["message"]
    unsigned = {k: v for k, v in headers.items() if k.lower() != "x-signature"}
    assert (await client.post("/webhooks/cryptopocket", content=body, headers=unsigned)).status_code == 401
    assert stored(container) == 0
    assert customer(container, "usr_1") is None


async def test_cryptopocket_missing_user_is_400_and_kept(app_client, pocket) -> None:
    client, container = app_client
    body, headers = pocket.webhook("usr_1", "valid")
    payload = json.loads(body)
    del payload["user_id"]
    body = json.dumps(payload).encode()
    from tracker.providers.simulators.cryptopocket import sign

    headers = {**headers, "X-Signature": sign(SECRET, body, headers["X-Timestamp"], "hex")}
    response = await client.post("/webhooks/cryptopocket", content=body, headers=headers)
    assert response.status_code == 400
    assert "user_id" in response.json()["error"]["message"]
    assert stored(container) == 1
    with container.engine.connect() as conn:
        row = conn.execute(select(inbound_events)).one()
    assert (row.provider, row.outcome) == ("cryptopocket", "rejected")
    assert f"stored as event {row.id}" in response.json()["error"]["message"]
    assert customer(container, "usr_1") is None


@pytest.mark.parametrize("timestamp", ["NaN", "Infinity", "1e400", "99999999999999999999", "-1e20"])
async def test_cryptopocket_timestamp_that_is_no_time_is_400_and_kept(app_client, pocket, timestamp: str) -> None:
    """A signed event whose ``timestamp`` no time can hold is refused with the reason and kept as rejected,
    not a 500 that the provider would retry for ever."""
    client, container = app_client
    body, headers = pocket.webhook("usr_1", "valid")
    payload = json.loads(body)
    payload["timestamp"] = 0
    body = json.dumps(payload).encode().replace(b'"timestamp": 0', f'"timestamp": {timestamp}'.encode())
    from tracker.providers.simulators.cryptopocket import sign

    headers = {**headers, "X-Signature": sign(SECRET, body, headers["X-Timestamp"], "hex")}
    response = await client.post("/webhooks/cryptopocket", content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_event"
    assert "timestamp cannot be read" in response.json()["error"]["message"]
    with container.engine.connect() as conn:
        row = conn.execute(select(inbound_events)).one()
    assert (row.provider, row.outcome) == ("cryptopocket", "rejected")
    assert customer(container, "usr_1") is None
