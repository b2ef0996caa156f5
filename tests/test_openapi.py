"""The OpenAPI document describes every route of the route table: typed parameters (enums, bounds, defaults),
a schema for every body, and the answers each route can give. What the handlers actually answer is
tests/test_openapi_schemathesis.py's part."""

from __future__ import annotations

import re
from typing import Any

from tracker.web import alerts_api, api, events_api
from tracker.web.app import ROUTES

ENUMS = {"provider", "state", "tier", "outcome", "sort"}
WHOLE_NUMBERS = {"id", "limit", "customer_id", "before"}
FREE_TEXT = {"token", "If-None-Match", "X-API-Key", "X-Signature"}  # any string is taken (and checked later)
LISTS = {"/v1/customers": api.LIST_PARAMS, "/v1/alerts": alerts_api.PARAMETERS, "/v1/events": events_api.PARAMETERS}


async def served(client: Any) -> dict[str, Any]:
    answer = await client.get("/openapi.json")
    assert answer.status_code == 200
    document: dict[str, Any] = answer.json()
    assert document["openapi"] == "3.1.0"
    return document


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method.upper(), operation) for path, item in document["paths"].items()
            for method, operation in item.items()]


def references(node: Any) -> list[str]:
    """Every $ref in ``node``."""
    if isinstance(node, list):
        return [ref for value in node for ref in references(value)]
    if not isinstance(node, dict):
        return []
    own = [node["$ref"]] if "$ref" in node else []
    return own + references(list(node.values()))


async def test_every_route_is_described_with_its_answers(client: Any) -> None:
    document = await served(client)
    for path, method, _, summary, key in ROUTES:
        operation = document["paths"][path.replace(":int", "")][method.lower()]
        assert operation["summary"] == summary
        assert operation["operationId"]
        answers = operation["responses"]
        ok = [code for code in answers if code.startswith("2")]
        assert ok, (method, path)
        for code in ok:
            assert "content" in answers[code], (method, path, code)
        if key is not None and key != "webhook":
            assert operation["security"] == [{"apiKey": []}]
            assert {"401", "403", "503"} <= answers.keys(), (method, path)
        for code, answer in answers.items():
            if int(code) >= 400 and (method, path, code) != ("GET", "/readyz", "503"):
                assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    ids = {operation["operationId"] for _, _, operation in operations(document)}
    assert len(ids) == len(operations(document)), "operationIds repeat"


async def test_every_parameter_is_typed(client: Any) -> None:
    document = await served(client)
    for path, method, operation in operations(document):
        parameters = operation.get("parameters", [])
        names = [p["name"] for p in parameters]
        assert len(names) == len(set(names)), (method, path)
        assert set(re.findall(r"{(\w+)}", path)) == {p["name"] for p in parameters if p["in"] == "path"}
        for parameter in parameters:
            name, schema = parameter["name"], parameter["schema"]
            where = (method, path, name)
            assert parameter.get("description"), where
            assert "type" in schema, where
            if name in ENUMS:
                assert schema["type"] == "string", where
                assert schema["enum"], where
            if name in WHOLE_NUMBERS:
                assert schema["type"] == "integer", where
                assert schema["minimum"] >= 1, where
                assert "maximum" in schema, where
            if schema == {"type": "string"}:
                assert name in FREE_TEXT, f"{where}: a bare string"
            if name == "limit":
                assert schema["default"] == 50
        if path in LISTS and method == "GET":
            documented = {p["name"] for p in parameters if p["in"] == "query"}
            assert documented == LISTS[path], f"{path}: the handler takes {sorted(LISTS[path])}"


async def test_every_body_has_a_component_schema(client: Any) -> None:
    document = await served(client)
    schemas = document["components"]["schemas"]
    for name in ("Customer", "CustomerList", "History", "Alert", "AlertList", "Summary", "Event", "EventList",
                 "Error", "Register", "Upload", "SetState", "Replay", "WebhookAnswer", "PollResult"):
        assert schemas[name]["type"] == "object", name
    for reference in references(document):
        assert reference.removeprefix("#/components/schemas/") in schemas, reference
    customer = schemas["Customer"]["properties"]
    assert customer["last_polled_at"] == {"type": ["string", "null"], "format": "date-time"}
    assert customer["last_poll_error"]["type"] == ["string", "null"]
    assert customer["tier"]["enum"] == ["none", "overdue", "critical"]
    assert set(schemas["Customer"]["required"]) == set(customer) - {"warnings"}
    assert schemas["History"]["required"] == ["customer", "transitions", "events", "uploads"]
    oldest = schemas["ProviderSummary"]["properties"]["oldest_pending_customer"]
    assert oldest["type"] == ["object", "null"]
    assert set(oldest["properties"]) == {"id", "provider_customer_id", "pending_since"}
    poll = schemas["PollResult"]["properties"]["poll"]["properties"]
    assert poll["outcome"]["enum"] == ["changed", "unchanged", "failed"]
    for name in ("Register", "Upload", "SetState"):
        assert schemas[name]["additionalProperties"] is False, f"the API refuses unknown fields in {name}"


async def test_durations_follow_what_the_list_takes(client: Any, read_key: dict[str, str]) -> None:
    document = await served(client)
    parameter = next(p for p in document["paths"]["/v1/customers"]["get"]["parameters"]
                     if p["name"] == "pending_longer_than")
    pattern = re.compile(parameter["schema"]["pattern"])
    for value in ("90s", "15m", "2h", "3d", "1w", "1h30m", "500ms", "90", "1.5h", "2H"):
        assert pattern.fullmatch(value), value
        answer = await client.get("/v1/customers", params={"pending_longer_than": value}, headers=read_key)
        assert answer.status_code == 200, (value, answer.text)
    for value in ("", "h", "2 h", "2x", "-1h", "1h-", "h2"):
        assert not pattern.fullmatch(value), value
        answer = await client.get("/v1/customers", params={"pending_longer_than": value}, headers=read_key)
        assert answer.status_code == 400, (value, answer.text)
