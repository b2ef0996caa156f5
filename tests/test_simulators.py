"""Provider simulators, driven over real HTTP semantics (httpx into the ASGI apps) on a FakeClock."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tracker.clock import FakeClock
from tracker.providers import blaaiz as blaaiz_provider
from tracker.providers.simulators import (
    SIMULATORS,
    BlaaizSimulator,
    ConnectFiSimulator,
    CryptoPocketSimulator,
    TimeoutASGITransport,
    parse_rate,
)
from tracker.providers.simulators.__main__ import build, describe, parser

# ----------------------------------------------------------------------------------------------- helpers


class Receiver:
    """A stand-in webhook endpoint that keeps what it was sent."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes, dict[str, str]]] = []

        async def take(request: Request) -> JSONResponse:
            self.received.append((request.url.path, await request.body(), dict(request.headers)))
            return JSONResponse({"status": "accepted"})

        self.app = Starlette(routes=[Route("/{path:path}", take, methods=["POST"])])

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://tracker.test")


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def blaaiz(fake_clock: FakeClock) -> BlaaizSimulator:
    return BlaaizSimulator(clock=fake_clock, signing_secret="whsec_sim_test")


@pytest.fixture
async def blaaiz_http(blaaiz: BlaaizSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=blaaiz.app), base_url=blaaiz.default_base_url
                                 ) as http:
        yield http


@pytest.fixture
def connectfi(fake_clock: FakeClock) -> ConnectFiSimulator:
    return ConnectFiSimulator(clock=fake_clock)


@pytest.fixture
async def connectfi_http(connectfi: ConnectFiSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with connectfi.client() as http:
        yield http


@pytest.fixture
def cryptopocket(fake_clock: FakeClock) -> CryptoPocketSimulator:
    return CryptoPocketSimulator(clock=fake_clock)


@pytest.fixture
async def cryptopocket_http(cryptopocket: CryptoPocketSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with cryptopocket.client(base_url=cryptopocket.api_base_url) as http:
        yield http


async def blaaiz_token(http: httpx.AsyncClient, sim: BlaaizSimulator, scope: str | None = "customer:read") -> str:
    form = {"grant_type": "client_credentials", "client_id": sim.client_id, "client_secret": sim.client_secret}
    if scope is not None:
        form["scope"] = scope
    response = await http.post("/oauth/token", data=form)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def connectfi_token(http: httpx.AsyncClient, sim: ConnectFiSimulator) -> dict[str, str]:
    response = await http.post("/auth/get-token", json={"user": {"login": sim.login, "password": sim.password}})
    assert response.status_code == 200, response.text
    return {"x-connectfi-token": response.json()["data"]["token"]}


async def cryptopocket_token(http: httpx.AsyncClient, sim: CryptoPocketSimulator) -> dict[str, str]:
    response = await http.post("authenticate", json={"api_key": sim.api_key, "api_secret": sim.api_secret})
    assert response.json()["status"] == "success", response.text
    return {"auth": response.json()["token"]}


# ------------------------------------------------------------------------------------------------ Blaaiz


async def test_blaaiz_token_and_every_status(blaaiz: BlaaizSimulator, blaaiz_http: httpx.AsyncClient) -> None:
    form = {"grant_type": "client_credentials", "client_id": blaaiz.client_id, "client_secret": blaaiz.client_secret,
            "scope": "customer:read webhook:write"}
    answer = (await blaaiz_http.post("/oauth/token", data=form)).json()
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 900
    for status in ("PENDING", "PROCESSING", "VERIFIED", "REJECTED", "ON_HOLD"):
        blaaiz.add_customer(f"cus_{status.lower()}", status)
        response = await blaaiz_http.get(f"/api/external/customer/cus_{status.lower()}",
                                         headers=bearer(answer["access_token"]))
        assert response.status_code == 200
        body = response.json()
        assert body["message"] == "Customer retrieved"
        assert body["data"]["verification_status"] == status
        assert body["data"]["type"] == "individual"
        assert body["data"]["email"] == f"customer-cus_{status.lower()}@example.invalid"
        assert body["data"]["created_at"].endswith("Z")
        assert response.headers["X-RateLimit-Limit"] == "120"
        assert int(response.headers["X-RateLimit-Reset"]) > int(blaaiz.clock.now().timestamp())
    assert blaaiz.count("/api/external/customer/") == 5
    assert blaaiz.count(customer_id="cus_verified") == 1


async def test_blaaiz_business_customer_has_owners_and_documents(blaaiz: BlaaizSimulator,
                                                                  blaaiz_http: httpx.AsyncClient) -> None:
    blaaiz.add_customer("biz_1", "REJECTED", type="business",
                        owners=[{"id": "own_1", "status": "APPROVED", "admin_comments": None}],
                        documents=[{"id": "doc_1", "status": "REJECTED", "admin_comments": None}])
    token = await blaaiz_token(blaaiz_http, blaaiz)
    data = (await blaaiz_http.get("/api/external/customer/biz_1", headers=bearer(token))).json()["data"]
    assert data["type"] == "business"
    assert data["owners"][0]["status"] == "APPROVED"
    assert data["documents"] == [{"id": "doc_1", "status": "REJECTED", "admin_comments": None}]


async def test_blaaiz_auth_failures(blaaiz: BlaaizSimulator, blaaiz_http: httpx.AsyncClient) -> None:
    blaaiz.add_customer("cus_1")
    base = {"grant_type": "client_credentials", "client_id": blaaiz.client_id}
    bad = await blaaiz_http.post("/oauth/token", data={**base, "client_secret": "wrong", "scope": "customer:read"})
    assert (bad.status_code, bad.json()) == (401, {"message": "Invalid client credentials"})
    bundle = await blaaiz_http.post("/oauth/token", data={**base, "client_secret": blaaiz.client_secret,
                                                           "scope": "customer:*"})
    assert bundle.status_code == 400
    assert "message" in bundle.json()
    as_json = await blaaiz_http.post("/oauth/token", json={**base, "client_secret": blaaiz.client_secret})
    assert as_json.status_code == 400

    no_scope = await blaaiz_token(blaaiz_http, blaaiz, scope=None)
    refused = await blaaiz_http.get("/api/external/customer/cus_1", headers=bearer(no_scope))
    assert refused.status_code == 403
    assert "message" in refused.json()
    missing = await blaaiz_http.get("/api/external/customer/cus_1")
    assert (missing.status_code, missing.json()) == (401, {"message": "Unauthenticated."})
    token = await blaaiz_token(blaaiz_http, blaaiz)
    unknown = await blaaiz_http.get("/api/external/customer/nobody", headers=bearer(token))
    assert (unknown.status_code, unknown.json()) == (404, {"message": "Customer not found", "status": False})


async def test_blaaiz_token_expires_after_lifetime_and_on_demand(
        blaaiz: BlaaizSimulator, blaaiz_http: httpx.AsyncClient, fake_clock: FakeClock) -> None:
    blaaiz.add_customer("cus_1")
    token = await blaaiz_token(blaaiz_http, blaaiz)
    fake_clock.advance(timedelta(seconds=899))
    assert (await blaaiz_http.get("/api/external/customer/cus_1", headers=bearer(token))).status_code == 200
    fake_clock.advance(timedelta(seconds=1))
    expired = await blaaiz_http.get("/api/external/customer/cus_1", headers=bearer(token))
    assert (expired.status_code, expired.json()) == (401, {"message": "Unauthenticated."})

    blaaiz.token_lifetime = 60
    token = await blaaiz_token(blaaiz_http, blaaiz)
    assert (await blaaiz_http.get("/api/external/customer/cus_1", headers=bearer(token))).status_code == 200
    blaaiz.expire_tokens()
    assert (await blaaiz_http.get("/api/external/customer/cus_1", headers=bearer(token))).status_code == 401


async def test_blaaiz_list_paginates_newest_first(blaaiz: BlaaizSimulator, blaaiz_http: httpx.AsyncClient,
                                                  fake_clock: FakeClock) -> None:
    for i in range(40):
        blaaiz.add_customer(f"cus_{i:02d}", "PENDING")
        fake_clock.advance(timedelta(seconds=1))
    blaaiz.add_customer("cus_processing", "PROCESSING")
    blaaiz.add_customer("biz_pending", "PENDING", type="business")
    token = await blaaiz_token(blaaiz_http, blaaiz)
    url: str | None = "/api/external/customer?verification_status=PENDING&type=individual&paginate=true"
    seen: list[str] = []
    pages = []
    while url is not None:
        response = await blaaiz_http.get(url, headers=bearer(token))
        assert response.status_code == 200
        page = response.json()["data"]
        pages.append(page)
        seen += [customer["id"] for customer in page["data"]]
        url = page["next_page_url"]
    assert [len(p["data"]) for p in pages] == [15, 15, 10]
    assert [p["current_page"] for p in pages] == [1, 2, 3]
    assert {(p["last_page"], p["per_page"], p["total"]) for p in pages} == {(3, 15, 40)}
    assert seen == [f"cus_{i:02d}" for i in range(39, -1, -1)]
    assert pages[0]["data"][0]["verification_status"] == "PENDING"

    everything = (await blaaiz_http.get("/api/external/customer", headers=bearer(token))).json()["data"]
    assert len(everything) == 42


async def test_blaaiz_script_changes_status_lazily(blaaiz: BlaaizSimulator, blaaiz_http: httpx.AsyncClient,
                                                   fake_clock: FakeClock) -> None:
    blaaiz.add_customer("cus_1", "PENDING")
    blaaiz.script("cus_1", [(60, "PROCESSING"), (300, "VERIFIED")])
    token = await blaaiz_token(blaaiz_http, blaaiz)

    async def read() -> dict[str, Any]:
        response = await blaaiz_http.get("/api/external/customer/cus_1", headers=bearer(token))
        data: dict[str, Any] = response.json()["data"]
        return data

    assert (await read())["verification_status"] == "PENDING"
    start = fake_clock.now()
    fake_clock.advance(timedelta(seconds=61))
    assert (await read())["verification_status"] == "PROCESSING"
    fake_clock.advance(timedelta(seconds=240))
    data = await read()
    assert data["verification_status"] == "VERIFIED"
    assert blaaiz_provider.parse_time(data["updated_at"]) == start + timedelta(seconds=300)
    changes = blaaiz.pop_changes()
    assert [(c.record_id, c.old_status, c.new_status) for c in changes] == [("cus_1", "PENDING", "VERIFIED")]
    assert blaaiz.pop_changes() == []
    blaaiz.set_status("cus_1", "REJECTED", comment="blurry document")
    assert blaaiz.status_of("cus_1") == "REJECTED"


async def test_blaaiz_rate_limits_answer_429_with_retry_after(blaaiz: BlaaizSimulator,
                                                              blaaiz_http: httpx.AsyncClient,
                                                              fake_clock: FakeClock) -> None:
    blaaiz.limits = [(3, 60), (100, 3600)]
    blaaiz.add_customer("cus_1")
    token = await blaaiz_token(blaaiz_http, blaaiz)  # the token endpoint is not counted
    remaining = []
    for _ in range(3):
        response = await blaaiz_http.get("/api/external/customer/cus_1", headers=bearer(token))
        assert response.status_code == 200
        remaining.append(response.headers["X-RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]
    fake_clock.advance(timedelta(seconds=20))
    over = await blaaiz_http.get("/api/external/customer/cus_1", headers=bearer(token))
    assert over.status_code == 429
    assert over.headers["Retry-After"] == "40"
    assert over.headers["X-RateLimit-Limit"] == "3"
    assert over.headers["X-RateLimit-Remaining"] == "0"
    assert int(over.headers["X-RateLimit-Reset"]) == int(fake_clock.now().timestamp()) + 40
    assert "message" in over.json()
    fake_clock.advance(timedelta(seconds=40))
    assert (await blaaiz_http.get("/api/external/customer/cus_1", headers=bearer(token))).status_code == 200
    assert blaaiz.count(status=429) == 1
    assert blaaiz.max_in_window(60, by="clock", path_contains="/customer/") == 4


async def test_blaaiz_webhooks_verify_with_the_tracker(blaaiz: BlaaizSimulator, blaaiz_http: httpx.AsyncClient,
                                                       fake_clock: FakeClock) -> None:
    token = await blaaiz_token(blaaiz_http, blaaiz, scope="webhook:write")
    registered = await blaaiz_http.post("/api/external/webhook", json={"url": "http://tracker.test/webhooks/blaaiz"},
                                        headers=bearer(token))
    assert registered.status_code == 200
    assert registered.json()["data"]["signing_secret"] == "whsec_sim_test"
    assert blaaiz.collection_url == "http://tracker.test/webhooks/blaaiz"

    blaaiz.add_customer("cus_1", "PROCESSING")
    body, headers = blaaiz.webhook("cus_1", "REJECTED", comment="document unreadable")
    blaaiz_provider.verify(headers, body, ["whsec_sim_test"], fake_clock.now(), 300)
    with pytest.raises(blaaiz_provider.SignatureError):
        blaaiz_provider.verify(headers, body, ["other"], fake_clock.now(), 300)
    payload = json.loads(body)
    assert payload["event_type"] == "customer.status_changed"
    assert (payload["old_status"], payload["new_status"], payload["comment"]) == ("PROCESSING", "REJECTED",
                                                                                  "document unreadable")
    assert payload["customer_email"] == "customer-cus_1@example.invalid"
    assert headers["x-blaaiz-timestamp"] == str(int(fake_clock.now().timestamp()))
    assert blaaiz_provider.parse(payload).signal is not None
    assert blaaiz.status_of("cus_1") == "PROCESSING"  # building a delivery changes nothing

    receiver = Receiver()
    async with receiver.client() as tracker:
        response = await blaaiz.send_webhook(tracker, "/webhooks/blaaiz", "cus_1", "VERIFIED",
                                             event_type="customer.verified")
        assert response.status_code == 200
        assert blaaiz.status_of("cus_1") == "VERIFIED"
        blaaiz.pop_changes()
        blaaiz.script("cus_1", [(10, "REJECTED")])
        fake_clock.advance(timedelta(seconds=10))
        assert len(await blaaiz.deliver_changes(tracker, "/webhooks/blaaiz")) == 1
    (_, first_body, first_headers), (_, second_body, second_headers) = receiver.received
    assert json.loads(first_body)["event_type"] == "customer.verified"
    assert json.loads(first_body)["event_id"] != json.loads(second_body)["event_id"]
    assert json.loads(second_body)["old_status"] == "VERIFIED"
    for sent_body, sent_headers in ((first_body, first_headers), (second_body, second_headers)):
        blaaiz_provider.verify(sent_headers, sent_body, ["whsec_sim_test"], fake_clock.now(), 300)
    assert [d.status for d in blaaiz.deliveries] == [200, 200]


# ------------------------------------------------------------------------------------ faults and the log


async def test_fail_is_consumed_per_matching_request(blaaiz: BlaaizSimulator, blaaiz_http: httpx.AsyncClient
                                                     ) -> None:
    blaaiz.add_customer("cus_1")
    blaaiz.add_customer("cus_2")
    token = await blaaiz_token(blaaiz_http, blaaiz)
    blaaiz.fail(times=2, status=503, path="/customer/")
    blaaiz.fail(status=502, body=b"<html>bad gateway</html>", customer_id="cus_2")
    assert (await blaaiz_http.get("/api/external/customer/cus_1", headers=bearer(token))).status_code == 503
    second = await blaaiz_http.get("/api/external/customer/cus_2", headers=bearer(token))
    assert (second.status_code, second.json()) == (503, {"message": "Server Error"})
    gateway = await blaaiz_http.get("/api/external/customer/cus_2", headers=bearer(token))
    assert (gateway.status_code, gateway.text) == (502, "<html>bad gateway</html>")
    assert (await blaaiz_http.get("/api/external/customer/cus_2", headers=bearer(token))).status_code == 200
    assert blaaiz.pending_faults == 0
    assert [r.fault for r in blaaiz.requests] == [None, "fail", "fail", "fail", None]
    assert blaaiz.count("/customer/", status=200) == 1


async def test_throttle_sends_retry_after_in_seconds_or_as_a_date(
        cryptopocket: CryptoPocketSimulator, cryptopocket_http: httpx.AsyncClient, fake_clock: FakeClock) -> None:
    cryptopocket.add_customer("usr_1", "processing")
    auth = await cryptopocket_token(cryptopocket_http, cryptopocket)
    cryptopocket.throttle(retry_after="5")
    cryptopocket.throttle(retry_after=cryptopocket.retry_at(120))
    cryptopocket.throttle(retry_after=None)
    seconds = await cryptopocket_http.get("kyc/check", params={"user_id": "usr_1"}, headers=auth)
    assert (seconds.status_code, seconds.headers["Retry-After"]) == (429, "5")
    dated = await cryptopocket_http.get("kyc/check", params={"user_id": "usr_1"}, headers=auth)
    assert dated.status_code == 429
    assert parsedate_to_datetime(dated.headers["Retry-After"]) == fake_clock.now() + timedelta(seconds=120)
    bare = await cryptopocket_http.get("kyc/check", params={"user_id": "usr_1"}, headers=auth)
    assert bare.status_code == 429
    assert "Retry-After" not in bare.headers
    assert (await cryptopocket_http.get("kyc/check", params={"user_id": "usr_1"}, headers=auth)).status_code == 200


async def test_hang_makes_the_client_time_out(connectfi: ConnectFiSimulator, fake_clock: FakeClock) -> None:
    connectfi.add_application("app_1", "cust_1", "running")
    async with httpx.AsyncClient(transport=TimeoutASGITransport(app=connectfi.app),
                                 base_url="http://connectfi.sim", timeout=0.05) as http:
        headers = await connectfi_token(http, connectfi)
        connectfi.hang(seconds=1.0, path="/akepa/")
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/akepa/status", json={"customerId": "cust_1", "applicationId": "app_1"},
                            headers=headers)
        answer = await http.post("/akepa/status", json={"customerId": "cust_1", "applicationId": "app_1"},
                                 headers=headers)
        assert answer.json()["data"]["status"] == "running"
        connectfi.latency = 0.2
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/akepa/list", json={"customerId": "cust_1"}, headers=headers)
    hung = connectfi.requests[1]
    assert (hung.status, hung.fault, hung.customer_id) == (499, "hang", "cust_1")
    assert connectfi.in_flight == 0


async def test_log_tracks_concurrency_and_rate(cryptopocket: CryptoPocketSimulator,
                                               cryptopocket_http: httpx.AsyncClient) -> None:
    auth = await cryptopocket_token(cryptopocket_http, cryptopocket)
    cryptopocket.add_customers(5)
    cryptopocket.latency = 0.05
    await asyncio.gather(*(cryptopocket_http.get("kyc/check", params={"user_id": f"usr_sim_{i:06d}"}, headers=auth)
                           for i in range(1, 6)))
    assert cryptopocket.max_in_flight == 5
    assert cryptopocket.peak_per_second == 6
    assert cryptopocket.max_in_window(1.0) == 6
    assert cryptopocket.count("/kyc/check") == 5
    assert cryptopocket.count(customer_id="usr_sim_000003") == 1
    stats = cryptopocket.stats()
    assert stats["by_status"] == {"200": 6}
    cryptopocket.reset_log()
    assert cryptopocket.requests == []


async def test_control_endpoints_are_not_logged(connectfi: ConnectFiSimulator,
                                                connectfi_http: httpx.AsyncClient) -> None:
    added = await connectfi_http.post("/_sim/records", json={"id": "app_9", "status": "running",
                                                             "customerId": "cust_9"})
    assert added.json() == {"id": "app_9", "status": "running"}
    await connectfi_http.post("/_sim/records", json={"id": "app_9", "status": "completed", "outcome": "Approved"})
    assert connectfi.application_data("app_9")["outcome"] == "Approved"
    assert (await connectfi_http.get("/_sim/stats")).json()["total_requests"] == 0
    assert connectfi.requests == []


# ---------------------------------------------------------------------------------------------- connectFi


async def test_connectfi_auth(connectfi: ConnectFiSimulator, connectfi_http: httpx.AsyncClient,
                              fake_clock: FakeClock) -> None:
    ok = await connectfi_http.post("/auth/get-token", json={"user": {"login": connectfi.login,
                                                                     "password": connectfi.password}})
    body = ok.json()
    assert body["code"] == "0"
    assert body["data"]["dtsExpireAt"] == (fake_clock.now() + timedelta(seconds=1800)).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z")
    bad = await connectfi_http.post("/auth/get-token", json={"user": {"login": connectfi.login, "password": "x"}})
    assert bad.status_code == 401
    assert bad.json()["code"] == "unauthorized"
    malformed = await connectfi_http.post("/auth/get-token", json={"login": connectfi.login})
    assert (malformed.status_code, malformed.json()["code"]) == (400, "requestValidateError")


async def test_connectfi_statuses_and_outcomes(connectfi: ConnectFiSimulator,
                                               connectfi_http: httpx.AsyncClient) -> None:
    headers = await connectfi_token(connectfi_http, connectfi)
    statuses = ["pending_step_up", "pending_documents", "waiting_review", "pending_journey_application_review",
                "running", "data_request", "something_new"]
    for i, status in enumerate(statuses):
        connectfi.add_application(f"app_{i}", "cust_1", status, reference=f"ref-{i}")
        body = (await connectfi_http.post("/akepa/status", json={"customerId": "cust_1", "applicationId": f"app_{i}"},
                                          headers=headers)).json()
        assert body["code"] == "0"
        assert body["requestId"]
        data = body["data"]
        assert (data["applicationId"], data["customerId"], data["reference"]) == (f"app_{i}", "cust_1", f"ref-{i}")
        assert (data["status"], data["outcome"]) == (status, None)
        assert data["entityApplications"] == [{"entityId": "cust_1", "isCustomer": True, "status": status,
                                               "outcome": None}]
    for outcome, entity in (("Approved", "approved"), ("Denied", "declined"), ("declined", "declined")):
        connectfi.add_application(f"app_{outcome}", "cust_2", "waiting_review", outcome=outcome)
        connectfi.set_status(f"app_{outcome}", "completed")
        data = (await connectfi_http.post("/akepa/status", json={"customerId": "cust_2",
                                                                 "applicationId": f"app_{outcome}"},
                                          headers=headers)).json()["data"]
        assert (data["status"], data["outcome"], data["entityApplications"][0]["outcome"]) == (
            "completed", outcome, entity)
    listed = (await connectfi_http.post("/akepa/list", json={"customerId": "cust_1"}, headers=headers)).json()
    assert listed["code"] == "0"
    assert len(listed["data"]) == len(statuses)


async def test_connectfi_errors_and_token_expiry(connectfi: ConnectFiSimulator, connectfi_http: httpx.AsyncClient,
                                                 fake_clock: FakeClock) -> None:
    connectfi.add_application("app_1", "cust_1", "running")
    headers = await connectfi_token(connectfi_http, connectfi)
    unknown = await connectfi_http.post("/akepa/status", json={"customerId": "cust_1", "applicationId": "nope"},
                                        headers=headers)
    assert (unknown.status_code, unknown.json()["code"]) == (404, "applicationNotFound")
    assert unknown.json()["requestId"]
    other = await connectfi_http.post("/akepa/status", json={"customerId": "cust_x", "applicationId": "app_1"},
                                      headers=headers)
    assert other.status_code == 404
    invalid = await connectfi_http.post("/akepa/status", json={"customerId": "cust_1"}, headers=headers)
    assert (invalid.status_code, invalid.json()["code"]) == (400, "requestValidateError")
    missing = await connectfi_http.post("/akepa/status", json={"customerId": "cust_1", "applicationId": "app_1"})
    assert (missing.status_code, missing.json()["code"]) == (401, "unauthorized")
    assert set(missing.json()) == {"requestId", "code", "message"}
    fake_clock.advance(timedelta(seconds=1800))
    expired = await connectfi_http.post("/akepa/status", json={"customerId": "cust_1", "applicationId": "app_1"},
                                        headers=headers)
    assert expired.status_code == 401
    headers = await connectfi_token(connectfi_http, connectfi)
    connectfi.expire_tokens()
    assert (await connectfi_http.post("/akepa/list", json={"customerId": "cust_1"}, headers=headers)
            ).status_code == 401
    connectfi.fail()
    failed = await connectfi_http.post("/auth/get-token", json={"user": {"login": "a", "password": "b"}})
    assert (failed.status_code, failed.json()["code"]) == (500, "internalServerError")


async def test_connectfi_script_and_callback(connectfi: ConnectFiSimulator, connectfi_http: httpx.AsyncClient,
                                             fake_clock: FakeClock) -> None:
    headers = await connectfi_token(connectfi_http, connectfi)
    started = await connectfi_http.post("/akepa/identification", headers=headers,
                                        json={"customerId": "cust_7", "reference": "ref-7",
                                              "webhookURL": "/webhooks/connectfi/tok"})
    application_id = started.json()["data"]["applicationId"]
    assert started.json()["data"]["status"] == "pending_documents"
    connectfi.set_status(application_id, "waiting_review", outcome="Approved")
    connectfi.script(application_id, [(3600, "completed")])
    assert connectfi.application_data(application_id)["outcome"] is None
    fake_clock.advance(timedelta(hours=1))
    assert connectfi.status_of(application_id) == "completed"

    receiver = Receiver()
    async with receiver.client() as tracker:
        assert len(await connectfi.deliver_changes(tracker)) == 1
        response = await connectfi.send_callback(tracker, "/webhooks/connectfi/tok", application_id)
        assert response.status_code == 200
    (path, body, _), _ = receiver.received
    assert path == "/webhooks/connectfi/tok"
    payload = json.loads(body)
    assert payload["code"] == "0"
    assert payload["data"]["status"] == "completed"
    assert payload["data"]["outcome"] == "Approved"
    assert payload["data"]["entityApplications"][0]["outcome"] == "approved"
    assert json.loads(connectfi.callback(application_id))["data"]["aggregatorId"] == connectfi.aggregator_id


# ------------------------------------------------------------------------------------------- CryptoPocket


async def test_cryptopocket_auth_and_statuses(cryptopocket: CryptoPocketSimulator,
                                              cryptopocket_http: httpx.AsyncClient, fake_clock: FakeClock) -> None:
    wrong = await cryptopocket_http.post("authenticate", json={"api_key": cryptopocket.api_key, "api_secret": "x"})
    assert (wrong.status_code, wrong.json()) == (200, {"status": "error", "error": "authorization_incorrect"})
    auth = await cryptopocket_token(cryptopocket_http, cryptopocket)
    for status in ("valid", "fail", "unused", "processing", "on_hold"):
        cryptopocket.add_customer(f"usr_{status}", status)
        response = await cryptopocket_http.get("kyc/check", params={"user_id": f"usr_{status}"}, headers=auth)
        assert (response.status_code, response.json()) == (
            200, {"status": "success", "user_id": f"usr_{status}", "kyc_status": status})
    doubled = await cryptopocket_http.get("api/kyc/check", params={"user_id": "usr_valid"}, headers=auth)
    assert doubled.status_code == 404
    assert str(doubled.url) == "http://cryptopocket.sim/api/api/kyc/check?user_id=usr_valid"

    fake_clock.advance(timedelta(hours=1))
    expired = await cryptopocket_http.get("kyc/check", params={"user_id": "usr_valid"}, headers=auth)
    assert (expired.status_code, expired.json()["error"]) == (200, "authorization_incorrect")
    auth = await cryptopocket_token(cryptopocket_http, cryptopocket)
    cryptopocket.expire_tokens()
    again = await cryptopocket_http.get("kyc/check", params={"user_id": "usr_valid"}, headers=auth)
    assert again.json()["error"] == "authorization_incorrect"


async def test_cryptopocket_user_errors(cryptopocket: CryptoPocketSimulator,
                                        cryptopocket_http: httpx.AsyncClient) -> None:
    auth = await cryptopocket_token(cryptopocket_http, cryptopocket)
    cryptopocket.add_customer("usr_1", "processing")
    unknown = await cryptopocket_http.get("kyc/check", params={"user_id": "nobody"}, headers=auth)
    assert (unknown.status_code, unknown.json()) == (200, {"status": "error", "error": "user_not_found"})
    cryptopocket.unknown_user_http_status = 404
    unknown = await cryptopocket_http.get("kyc/check", params={"user_id": "nobody"}, headers=auth)
    assert (unknown.status_code, unknown.json()["error"]) == (404, "user_not_found")
    cryptopocket.forbid("usr_1")
    forbidden = await cryptopocket_http.get("kyc/check", params={"user_id": "usr_1"}, headers=auth)
    assert (forbidden.status_code, forbidden.json()) == (403, {"status": "error", "error": "user_not_in_integration"})
    cryptopocket.allow("usr_1")
    cryptopocket.fail()
    failed = await cryptopocket_http.get("kyc/check", params={"user_id": "usr_1"}, headers=auth)
    assert (failed.status_code, failed.json()) == (500, {"status": "error", "error": "unexpected_error"})
    cryptopocket.limits = [(1, 10)]
    assert (await cryptopocket_http.get("kyc/check", params={"user_id": "usr_1"}, headers=auth)).status_code == 200
    limited = await cryptopocket_http.get("kyc/check", params={"user_id": "usr_1"}, headers=auth)
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "10")


@pytest.mark.parametrize("encoding", ["hex", "base64"])
async def test_cryptopocket_webhook_signature(cryptopocket: CryptoPocketSimulator, fake_clock: FakeClock,
                                              encoding: Any) -> None:
    cryptopocket.add_customer("usr_1", "processing")
    body, headers = cryptopocket.webhook("usr_1", "valid", encoding=encoding)
    timestamp = headers["X-Timestamp"]
    assert timestamp == str(int(fake_clock.now().timestamp()))
    assert headers["X-API-Key"] == cryptopocket.api_key
    digest = hmac.new(cryptopocket.api_secret.encode(), body + timestamp.encode(), hashlib.sha256)
    expected = digest.hexdigest() if encoding == "hex" else base64.b64encode(digest.digest()).decode()
    assert hmac.compare_digest(headers["X-Signature"], expected)
    assert json.loads(body) == {"event": "kyc.status_changed", "user_id": "usr_1", "kyc_status": "valid",
                                "timestamp": int(timestamp)}
    receiver = Receiver()
    async with receiver.client() as tracker:
        response = await cryptopocket.send_webhook(tracker, "/webhooks/cryptopocket", "usr_1", "fail",
                                                   encoding=encoding)
    assert response.status_code == 200
    assert cryptopocket.status_of("usr_1") == "fail"
    _, sent_body, sent_headers = receiver.received[0]
    digest = hmac.new(cryptopocket.api_secret.encode(), sent_body + sent_headers["x-timestamp"].encode(),
                      hashlib.sha256)
    expected = digest.hexdigest() if encoding == "hex" else base64.b64encode(digest.digest()).decode()
    assert sent_headers["x-signature"] == expected


# ------------------------------------------------------------------------------------------------- the CLI


def test_parse_rate() -> None:
    assert parse_rate("20/s") == (20, 1.0)
    assert parse_rate("120/m") == (120, 60.0)
    assert parse_rate("1500/h") == (1500, 3600.0)
    assert parse_rate("5/10s") == (5, 10.0)
    for bad in ("20", "x/s", "20/d", "0/s"):
        with pytest.raises(ValueError, match="bad rate"):
            parse_rate(bad)


def test_cli_builds_each_simulator() -> None:
    assert set(SIMULATORS) == {"blaaiz", "connectfi", "cryptopocket"}
    sim = build(parser().parse_args(["blaaiz", "--port", "9101", "--latency", "0.05", "--rate", "20/s",
                                     "--rate", "1000/m", "--customers", "3", "--status", "processing"]))
    assert isinstance(sim, BlaaizSimulator)
    assert sim.limits == [(20, 1.0), (1000, 60.0)]
    assert sim.latency == 0.05
    assert [sim.status_of(i) for i in sim.record_ids] == ["PROCESSING"] * 3
    assert "blaaiz simulator on http://127.0.0.1:9101" in describe(sim, "http://127.0.0.1:9101")
    default = build(parser().parse_args(["blaaiz", "--port", "1"]))
    assert default.limits == [(120, 60.0), (1500, 3600.0)]
    assert build(parser().parse_args(["blaaiz", "--port", "1", "--no-rate-limit"])).limits == []
    connectfi = build(parser().parse_args(["connectfi", "--port", "1", "--customers", "2"]))
    assert isinstance(connectfi, ConnectFiSimulator)
    assert connectfi.application_data(connectfi.record_ids[0])["status"] == "waiting_review"
    cryptopocket = build(parser().parse_args(["cryptopocket", "--port", "1", "--customers", "2",
                                              "--token-lifetime", "0"]))
    assert cryptopocket.token_lifetime is None
    assert cryptopocket.status_of(cryptopocket.record_ids[1]) == "processing"
    with pytest.raises(SystemExit):
        build(parser().parse_args(["cryptopocket", "--port", "1", "--rate", "fast"]))
