"""``GET /v1/customers/{id}`` and provider webhooks through the fast paths (tracker.web.fastpath) answer exactly
as the full Starlette path does, and hand everything they do not answer to the application."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, text
from starlette.types import Receive, Scope, Send

from tests.conftest import blaaiz_event, signed_headers
from tests.test_reads import seed
from tracker.clock import FakeClock
from tracker.settings import MAX_WEBHOOK_BODY
from tracker.web.app import create_app
from tracker.web.fastpath import CustomerReadFastPath, WebhookFastPath
from tracker.web.webhooks import receivers


@pytest.fixture
async def both(container: Any) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    fast = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(container)), base_url="http://t")
    full = httpx.AsyncClient(transport=httpx.ASGITransport(
        app=create_app(container, fast_reads=False, fast_webhooks=False)), base_url="http://t")
    async with fast, full:
        yield fast, full


def answer(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    return response.status_code, list(response.headers.multi_items()), response.content


async def same(both: tuple[httpx.AsyncClient, httpx.AsyncClient], url: str, headers: dict[str, str]
               ) -> httpx.Response:
    fast, full = both
    got, expected = await fast.get(url, headers=headers), await full.get(url, headers=headers)
    assert answer(got) == answer(expected), url
    return got


async def test_every_customer_is_answered_byte_for_byte_as_the_full_path_does(both, engine: Engine,
                                                                             read_key) -> None:
    seed(engine, 60)  # pending ones (pending_seconds), unicode, stamps with and without microseconds
    with engine.connect() as conn:
        ids = [row[0] for row in conn.execute(text("SELECT id FROM customers ORDER BY id"))]
    for customer_id in ids:
        url = f"/v1/customers/{customer_id}"
        plain = await same(both, url, read_key)
        assert plain.status_code == 200
        etag = plain.headers["etag"]
        assert (await same(both, url, {**read_key, "if-none-match": etag})).status_code == 304
    etag = plain.headers["etag"]
    for header, status in ((f"W/{etag}", 304), (f'"x", {etag}', 304), ("*", 304), ('"c0-v0-none"', 200),
                           ("", 200)):
        assert (await same(both, url, {**read_key, "if-none-match": header})).status_code == status


async def test_errors_and_other_requests_are_answered_by_the_application(both, engine: Engine,
                                                                          read_key) -> None:
    seed(engine, 3)
    cases: list[tuple[str, dict[str, str], int]] = [
        ("/v1/customers/1", {}, 401),  # no key
        ("/v1/customers/1", {"authorization": "Bearer trk_nope_nope"}, 401),  # unknown key
        ("/v1/customers/1", {"authorization": read_key["authorization"].replace("Bearer", "Basic")}, 401),
        ("/v1/customers/999", read_key, 404),
        ("/v1/customers/abc", read_key, 404),
        ("/v1/customers/\u0661", read_key, 404),  # an Arabic-Indic digit: not an id
        ("/v1/customers/1/", read_key, 307),  # Starlette's trailing-slash redirect, as before
        ("/v1/customers/0001", read_key, 200),  # the int converter reads it as 1
    ]
    for url, headers, status in cases:
        assert (await same(both, url, headers)).status_code == status, url


async def test_a_database_error_is_503_as_on_the_full_path(both, engine: Engine, read_key) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("the column is dropped under the kept connection's feet on SQLite only")
    seed(engine, 3)
    assert (await same(both, "/v1/customers/1", read_key)).status_code == 200  # the key is in the cache now
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE customers DROP COLUMN rejection_reason"))
    response = await same(both, "/v1/customers/1", read_key)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"


class Recorder:
    """The application behind the fast path: records what reaches it and answers 299."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.paths.append(scope["path"])
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def test_only_the_common_case_is_answered_without_the_application(container: Any, engine: Engine,
                                                                       read_key) -> None:
    seed(engine, 3)
    behind = Recorder()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=CustomerReadFastPath(behind, container)),
                             base_url="http://t")
    async with http:
        # The key is not in the cache yet: the application authenticates it (here it does not, so a second
        # client of the real app fills the cache first).
        assert (await http.get("/v1/customers/1", headers=read_key)).status_code == 299
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(container)),
                                     base_url="http://t") as real:
            assert (await real.get("/v1/customers/1", headers=read_key)).status_code == 200
        behind.paths.clear()
        assert (await http.get("/v1/customers/1", headers=read_key)).status_code == 200
        assert (await http.get("/v1/customers/2", headers=read_key)).status_code == 200
        assert behind.paths == []
        for path in ("/v1/customers/999", "/v1/customers", "/v1/customers/1/history", "/healthz"):
            assert (await http.get(path, headers=read_key)).status_code == 299
        assert (await http.post("/v1/customers/1", headers=read_key)).status_code == 299
        assert behind.paths == ["/v1/customers/999", "/v1/customers", "/v1/customers/1/history", "/healthz",
                                "/v1/customers/1"]


# --- webhooks ------------------------------------------------------------------------------------------------

def _normalized(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer with the inbox ids (which differ between two deliveries) blanked out."""
    body = re.sub(rb'"event":\d+', b'"event":N', response.content)
    body = re.sub(rb"stored as event \d+", b"stored as event N", body)
    headers = [(k, v) for k, v in response.headers.multi_items() if k != "content-length"]
    return response.status_code, headers, body


async def test_webhooks_are_answered_as_the_full_route_answers_them(both, clock: FakeClock) -> None:
    fast, full = both
    now = int(clock.now().timestamp())

    def signed(body: bytes) -> dict[str, str]:
        return signed_headers(body, now)

    cases: list[tuple[str, Any, Any, int]] = [  # (name, body for an event id, headers for a body, status)
        ("accepted", lambda n: blaaiz_event(f"cus_{n}", "PROCESSING", event_id=f"evt_{n}"), signed, 200),
        ("not a customer event", lambda n: {"event_type": "collection.completed", "event_id": f"evt_{n}",
                                            "type": "collection", "id": f"tx_{n}"}, signed, 200),
        ("unknown status", lambda n: blaaiz_event(f"cus_{n}", "ON_HOLD", event_id=f"evt_{n}"), signed, 200),
        ("no signature", lambda n: blaaiz_event(event_id=f"evt_{n}"),
         lambda body: {"content-type": "application/json", "x-blaaiz-timestamp": str(now)}, 401),
        ("wrong secret", lambda n: blaaiz_event(event_id=f"evt_{n}"),
         lambda body: signed_headers(body, now, secret="not-the-secret"), 401),
        ("old timestamp", lambda n: blaaiz_event(event_id=f"evt_{n}"),
         lambda body: signed_headers(body, now - 3600), 401),
        ("invalid JSON", lambda n: b'{"event_type": "customer.verified", "customer_id": ' + str(n).encode(),
         signed, 400),
        ("a JSON array", lambda n: [n, 2], signed, 400),
        ("no customer id", lambda n: {k: v for k, v in blaaiz_event(event_id=f"evt_{n}").items()
                                      if k != "customer_id"}, signed, 400),
        ("a charset in the content type", lambda n: blaaiz_event(f"cus_{n}", "PROCESSING", event_id=f"evt_{n}"),
         lambda body: {**signed(body), "content-type": "application/json; charset=utf-8"}, 200),
    ]
    n = 0
    for name, make_body, make_headers, status in cases:
        answers = []
        for http in (fast, full):
            n += 1
            payload = make_body(n)
            body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            answers.append(await http.post("/webhooks/blaaiz", content=body, headers=make_headers(body)))
        assert answers[0].status_code == status, (name, answers[0].text)
        assert _normalized(answers[0]) == _normalized(answers[1]), name
    # A re-sent delivery is a duplicate on both paths, whichever stored it first.
    body = json.dumps(blaaiz_event("cus_dup", "PROCESSING", event_id="evt_dup")).encode()
    first = await fast.post("/webhooks/blaaiz", content=body, headers=signed(body))
    again = [await http.post("/webhooks/blaaiz", content=body, headers=signed(body)) for http in (fast, full)]
    assert [a.json()["status"] for a in again] == ["duplicate", "duplicate"]
    assert _normalized(again[0]) == _normalized(again[1])
    assert again[0].json()["event"] != first.json()["event"]


async def test_only_a_declared_json_webhook_is_answered_without_the_application(container: Any,
                                                                               clock: FakeClock) -> None:
    behind = Recorder()
    app = WebhookFastPath(behind, container, receivers(container.settings))
    now = int(clock.now().timestamp())
    body = json.dumps(blaaiz_event("cus_fast", "PROCESSING")).encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        answered = await http.post("/webhooks/blaaiz", content=body, headers=signed_headers(body, now))
        assert answered.status_code == 200
        assert answered.json()["status"] == "accepted"
        # CryptoPocket is not configured here: the fast path answers its 401 as the route would.
        assert (await http.post("/webhooks/cryptopocket", content=b"{}",
                                headers={"content-type": "application/json"})).status_code == 401
        assert behind.paths == []
        passed_on = [
            await http.post("/webhooks/blaaiz", content=chunks(), headers=signed_headers(body, now)),  # no length
            await http.post("/webhooks/blaaiz", content=body,
                            headers={**signed_headers(body, now), "content-type": "text/plain"}),
            await http.post("/webhooks/blaaiz", content=b"x" * (MAX_WEBHOOK_BODY + 1),
                            headers={"content-type": "application/json"}),
            await http.get("/webhooks/blaaiz"),
            await http.post("/webhooks/blaaiz/", content=body, headers=signed_headers(body, now)),
            await http.post("/webhooks/connectfi/some-token", content=b"{}",
                            headers={"content-type": "application/json"}),
        ]
        assert [r.status_code for r in passed_on] == [299] * 6
        assert behind.paths == ["/webhooks/blaaiz"] * 4 + ["/webhooks/blaaiz/", "/webhooks/connectfi/some-token"]


async def test_a_sender_that_goes_away_mid_body_gets_nothing_and_nothing_is_stored(container: Any,
                                                                                  engine: Engine) -> None:
    app = WebhookFastPath(Recorder(), container, receivers(container.settings))
    messages = [{"type": "http.request", "body": b'{"event_type":', "more_body": True},
                {"type": "http.disconnect"}]
    sent: list[Any] = []

    async def receive() -> Any:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/webhooks/blaaiz",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"40")]}
    await app(scope, receive, send)
    assert sent == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM inbound_events")).scalar_one() == 0


async def test_an_unexpected_failure_on_the_webhook_fast_path_is_a_json_500_as_on_the_full_path(
        container: Any, clock: FakeClock) -> None:
    def broken(payload: Any) -> Any:
        raise ZeroDivisionError("a bug")

    now = int(clock.now().timestamp())
    body = json.dumps(blaaiz_event()).encode()
    answers = []
    for fast in (True, False):
        app = create_app(container, fast_webhooks=fast)
        app.state.receivers["blaaiz"] = dataclasses.replace(app.state.receivers["blaaiz"], parse=broken)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                     base_url="http://t") as http:
            answers.append(await http.post("/webhooks/blaaiz", content=body, headers=signed_headers(body, now)))
    assert answers[0].status_code == 500
    assert answers[0].json()["error"]["code"] == "internal"
    assert answer(answers[0]) == answer(answers[1])
