"""Schemathesis against /openapi.json: every operation the app routes, called with an admin key, held to
Schemathesis' checks. No answer may be a server error or contradict the document (status code, content type,
headers, body); data the document allows must be taken and data it forbids refused. Answers are held to a stricter
copy of the document in which no object has undocumented fields, so a field a handler adds without describing it
fails here too. Seeded and bounded (``CONFIG``): the same cases every run, about a minute in all."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import positive_data_acceptance
from starlette.routing import Route

from tests.conftest import blaaiz_event, make_settings, register, signed_headers
from tracker.domain.events import MAX_ID
from tracker.web.app import create_app

ASGIApp = Callable[..., Any]


class Target:
    """The app under test, as an ASGI app the schema can hold before the app exists (it needs the ``container``
    fixture), and its admin key: each test points them at its own. Lifespan messages go unanswered: the fixture
    starts and stops what the lifespan would."""

    app: ASGIApp | None = None
    key = ""
    loop: asyncio.AbstractEventLoop | None = None  # the one Schemathesis calls the app on

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            assert self.app is not None, "no app under test"
            self.loop = asyncio.get_running_loop()
            await self.app(scope, receive, send)


def strict(node: Any) -> Any:
    """``node`` with every object that lists its properties closed to others."""
    if isinstance(node, dict):
        closed = {key: strict(value) for key, value in node.items()}
        if "properties" in closed and "additionalProperties" not in closed:
            closed["additionalProperties"] = False
        return closed
    if isinstance(node, list):
        return [strict(value) for value in node]
    return node


def served_document() -> tuple[dict[str, Any], set[tuple[str, str]]]:
    """The document as the app serves it, and the operations the app routes (making an app needs only settings)."""
    app = create_app(SimpleNamespace(settings=make_settings("sqlite://")))
    routes = {(route.path.replace(":int", ""), method) for route in app.routes if isinstance(route, Route)
              for method in route.methods or ()}

    async def fetch() -> dict[str, Any]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tracker.test") as http:
            document: dict[str, Any] = (await http.get("/openapi.json")).json()
            return document

    return asyncio.run(fetch()), routes


TARGET = Target()
DOCUMENT, ROUTED = served_document()
CONFIG = schemathesis.Config.from_dict({
    "seed": 1,
    # The admin key is sent with every call (the test's headers); the fuzzer does not make up others.
    "generation": {"max-examples": 100, "with-security-parameters": False},
    # A schema-valid upload or manual state can still break a rule of the stored customer's provider or state (a
    # Blaaiz slot for a connectFi customer, id_file without its document_type): the API's 422, which the document
    # describes.
    "operations": [{"include-path-regex": r"^/v1/customers/\{id\}/(uploads|state)$", "checks": {
        "positive_data_acceptance": {"expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "422"]}}},
        # The event stream never ends: each call reads what comes in a moment, so fewer of them.
        {"include-path": "/v1/stream", "request-timeout": 0.2, "generation": {"max-examples": 10}}],
})
# An operation described before its route exists (work landing in parallel) is left out until the route lands.
schema = schemathesis.openapi.from_dict(strict(DOCUMENT), config=CONFIG).include(
    lambda ctx: (ctx.operation.path, ctx.operation.method.upper()) in ROUTED)
schema.app = TARGET
SEEDED_IDS = range(1, 6)  # customers 1 to 5 exist (``seed``), and events 1 to 3 and alert 1


@schema.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
    """Half the time, a valid id is one that exists, so that calls get past 404 to the rules behind it."""
    given = path_parameters.get("id") if isinstance(path_parameters, dict) else None
    if not isinstance(given, int) or isinstance(given, bool) or not 1 <= given <= MAX_ID:
        return st.just(path_parameters)
    return st.one_of(st.just(path_parameters), st.sampled_from(SEEDED_IDS).map(lambda i: {**path_parameters, "id": i}))


@schema.hook
def filter_case(context: Any, case: Any) -> bool:
    """The stream's resume point comes from Last-Event-ID, or ``?last_event_id=`` when that header is absent: a
    case with both says nothing about the second."""
    return not ("Last-Event-ID" in (case.headers or {}) and "last_event_id" in (case.query or {}))


def valid_data_is_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """Schemathesis' positive_data_acceptance, less what a schema cannot say: a cursor is any string to it, but only
    one this service gave out (for the same sort, not beside ``before``) is taken; and a duration's pattern has no
    upper bound. Both are refused with a 400 that names the parameter."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        message = response.json()["error"]["message"] if response.status_code == 400 else ""
        if "cursor" in (case.query or {}) and "cursor" in message:
            return None
        if message.startswith("pending_longer_than") and "longer than the longest" in message:
            return None
        raise


async def seed(http: httpx.AsyncClient, container: Any, clock: Any, key: dict[str, str]) -> None:
    """Customers of each provider in several states, stored events and an alert, so that small ids exist."""
    for provider, pcid in (("blaaiz", "cus_1"), ("blaaiz", "cus_2"), ("connectfi", "cf_1"), ("cryptopocket", "cp_1")):
        answer = await http.post("/v1/customers", headers=key, json={
            "provider": provider, "provider_customer_id": pcid, "customer_type": "individual", "reference": "r1"})
        assert answer.status_code == 201, answer.text
    assert (await http.post("/v1/customers/1/submit", headers=key)).status_code == 200
    stamp = int(clock.now().timestamp())
    for event in (blaaiz_event("cus_2", "VERIFIED"), blaaiz_event("cus_2", "REJECTED", comment="blurred"),
                  blaaiz_event("cus_9", "PROCESSING")):
        body = json.dumps(event).encode()
        answer = await http.post("/webhooks/blaaiz", content=body, headers=signed_headers(body, stamp))
        assert answer.status_code == 200, answer.text
    await asyncio.to_thread(container.applier.drain)
    assert (await http.get("/v1/alerts", headers=key)).json()["items"], "the contrary event raised no alert"


@pytest.fixture
async def app(container: Any, clock: Any, admin_key: dict[str, str]) -> AsyncIterator[ASGIApp]:
    TARGET.app, TARGET.key = create_app(container), admin_key["authorization"]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=TARGET), base_url="http://tracker.test") as http:
        await seed(http, container, clock, admin_key)
    yield TARGET
    if TARGET.loop is not None:  # what the lifespan would stop: the change feed's reader a stream started there
        asyncio.run_coroutine_threadsafe(container.changes.stop(), TARGET.loop).result(timeout=10)
    TARGET.app, TARGET.key, TARGET.loop = None, "", None


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_every_operation_answers_as_documented(case: Any, app: ASGIApp) -> None:
    # The key is spelled as the security scheme names it, so that the ignored_auth check can take it away.
    case.call_and_validate(headers={"Authorization": TARGET.key}, excluded_checks=[positive_data_acceptance],
                           additional_checks=[valid_data_is_accepted])


# What the fuzzer found with larger budgets than this file's, kept as plain cases that every run checks.
async def test_text_no_column_can_hold_is_refused(client: httpx.AsyncClient, admin_key: dict[str, str]) -> None:
    customer = await register(client, admin_key, "cus_1")
    url = f"/v1/customers/{customer['id']}"
    for body in ({"state": "pending", "reason": "because\x00"},
                 {"slot": "id_file_back", "document_type": "passport\x00"},
                 {"slot": "id_file_back", "document_type": "x" * 65}):
        answer = await client.post(f"{url}/{'state' if 'state' in body else 'uploads'}", json=body, headers=admin_key)
        assert answer.status_code == 422, answer.text
    for name in ("reference", "provider_customer_id"):
        answer = await client.get("/v1/customers", params={name: "r\x00"}, headers=admin_key)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["message"].startswith(name)


async def test_ids_are_whole_text_and_whole_numbers(client: httpx.AsyncClient, admin_key: dict[str, str]) -> None:
    body = {"provider": "connectfi", "provider_customer_id": "cf_1\n", "customer_type": "individual"}
    answer = await client.post("/v1/customers", json=body, headers=admin_key)
    assert answer.status_code == 422, "a trailing newline is no part of an id"
    answer = await client.post("/v1/customers", json={**body, "provider_customer_id": 10**30}, headers=admin_key)
    assert answer.status_code == 201, answer.text
    assert answer.json()["provider_customer_id"] == str(10**30), "an integer past 64 bits keeps its digits"
