"""The OpenAPI document, built from the route table (``tracker.web.app.ROUTES``) so no route goes undescribed:
each operation's parameters, request body and every answer it can give. The route table's last column names who
may call a route (``customer_ops``); what it takes and answers is ``OPERATIONS``, by method and path. The bodies'
schemas are in ``tracker.web.schemas``."""

from __future__ import annotations

import re
from typing import Any

import tracker
from tracker.domain.lifecycle import PROVIDERS
from tracker.durations import MAX_DAYS
from tracker.inbox.listing import OUTCOMES
from tracker.web.requests import MAX_PAGE
from tracker.web.schemas import ALERT_STATES, ID, NO_NUL, SCHEMAS, STATES, TIERS, Schema, enum, ref

# What tracker.durations reads: a number of seconds, or numbers each with a unit (1h30m); at most MAX_DAYS.
DURATION = r"^([0-9]+(\.[0-9]+)?|([0-9]+(\.[0-9]+)?([mM][sS]|[sSmMhHdDwW]))+)$"
CURSOR: Schema = {"type": "string", "pattern": r"^[A-Za-z0-9_-]+$"}

ERRORS = {400: "Bad input: the message names the parameter or field", 401: "Missing or invalid API key",
          403: "The API key's scope is too small", 404: "Not found", 409: "Conflicts with the customer's state",
          413: "Body over 1 MiB", 415: "Not JSON (send Content-Type: application/json)",
          422: "Well-formed, but breaks a rule (the message says which)",
          503: "The database (or the provider) cannot take the request now; retry after Retry-After seconds"}


def _content(schema: Schema, media: str = "application/json") -> dict[str, Any]:
    return {"content": {media: {"schema": schema}}}


def _header(description: str, schema: Schema | None = None) -> dict[str, Any]:
    return {"description": description, "required": True, "schema": schema or {"type": "string"}}


ETAG = {"ETag": _header("the version the answer shows; send it back as If-None-Match")}
RETRY = {"Retry-After": _header("seconds to wait before retrying", {"type": "integer", "minimum": 0})}


def answer(description: str, schema: Schema | None = None, headers: dict[str, Any] | None = None,
           media: str = "application/json") -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out.update(_content(schema, media))
    if headers:
        out["headers"] = headers
    return out


def errors(*codes: int) -> dict[str, Any]:
    return {str(code): answer(ERRORS[code], ref("Error"), RETRY if code == 503 else None) for code in codes}


def param(name: str, where: str, schema: Schema, description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required or where == "path", "description": description,
            "schema": schema}


def query(name: str, schema: Schema, description: str, **extra: Any) -> dict[str, Any]:
    return {**param(name, "query", schema, description), **extra}


def limit(default: int) -> dict[str, Any]:
    return query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": default},
                 "items on a page")


PROVIDER = query("provider", enum(PROVIDERS), "only this provider's")
CUSTOMER_ID = query("customer_id", ID, "only this customer's")
NEXT_PAGE = query("cursor", CURSOR, "next_cursor of the page before; a cursor this service did not give is a 400")
IF_NONE_MATCH = param("If-None-Match", "header", {"type": "string"}, "an ETag from before: 304 while it still holds")
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "id": param("id", "path", ID, "the id the tracker gave it"),
    "token": param("token", "path", {"type": "string"}, "TRACKER_CONNECTFI_WEBHOOK_TOKEN"),
}
WEBHOOK_HEADERS: dict[str, list[dict[str, Any]]] = {
    "/webhooks/blaaiz": [
        param("x-blaaiz-signature", "header", {"type": "string", "pattern": "^(sha256=)?[0-9A-Fa-f]{64}$"},
              "hex HMAC-SHA256 of '{x-blaaiz-timestamp}.{body}' with a signing secret", required=True),
        param("x-blaaiz-timestamp", "header", {"type": "integer"}, "unix seconds", required=True)],
    "/webhooks/cryptopocket": [
        param("X-API-Key", "header", {"type": "string"}, "TRACKER_CRYPTOPOCKET_API_KEY", required=True),
        param("X-Signature", "header", {"type": "string"}, "HMAC-SHA256 of the timestamp and body", required=True),
        param("X-Timestamp", "header", {"type": "integer"}, "unix seconds, within 5 minutes", required=True)],
}


def _op(operation_id: str, answers: dict[str, Any], codes: tuple[int, ...] = (), *,
        parameters: list[dict[str, Any]] | None = None, body: Schema | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"operationId": operation_id, "responses": {**answers, **errors(*codes)}}
    if parameters:
        spec["parameters"] = parameters
    if body:
        spec["requestBody"] = {"required": True, **_content(body)}
    return spec


def _customer(description: str) -> dict[str, Any]:
    return {"200": answer(description, ref("Customer"), ETAG)}


JSON_BODY = (400, 413, 415)  # what reading a JSON body can answer (tracker.web.requests.read_json)
WEBHOOK_ERRORS = (400, 401, 413, 415, 503)
WEBHOOK = {"200": answer("Stored durably (what applying it did is the event's outcome)", ref("WebhookAnswer"))}
EVENT_BODY: Schema = {"type": "object", "description": "the provider's event, as the provider documents it"}
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/webhooks/blaaiz"): _op("blaaizWebhook", WEBHOOK, WEBHOOK_ERRORS, body=EVENT_BODY),
    ("POST", "/webhooks/connectfi/{token}"): _op("connectfiWebhook", WEBHOOK, WEBHOOK_ERRORS, body=EVENT_BODY),
    ("POST", "/webhooks/cryptopocket"): _op("cryptopocketWebhook", WEBHOOK, WEBHOOK_ERRORS, body=EVENT_BODY),
    ("POST", "/v1/customers"): _op("registerCustomer", {
        "201": answer("Registered", ref("Customer"), ETAG),
        "200": answer("Registered already: the existing one (missing reference or application_id filled in)",
                      ref("Customer"), ETAG)}, (*JSON_BODY, 409, 422), body=ref("Register")),
    ("GET", "/v1/customers"): _op("listCustomers", {
        "200": answer("A page of customers", ref("CustomerList"), ETAG),
        "304": answer("Not modified since the ETag in If-None-Match", headers=ETAG)}, (400,), parameters=[
        PROVIDER, query("state", enum(STATES), "only customers in this state"),
        query("tier", enum(TIERS), "only customers at this escalation tier"),
        query("reference", {"type": "string", "pattern": NO_NUL}, "only customers with this client reference"),
        query("provider_customer_id", {"type": "string", "pattern": NO_NUL},
              "only customers with this id at their provider"),
        query("pending_longer_than", {"type": "string", "pattern": DURATION},
              f"pending for longer than this: 90s, 15m, 2h, 3d, 1w, 1h30m, or seconds; at most {MAX_DAYS} days"),
        query("customer_type", enum(["individual", "business", "unknown"]),
              "only customers of this type (unknown: discovered by webhook, not registered yet)"),
        query("changed_since", {"type": "string", "format": "date-time"},
              "only customers whose record changed after this time (ISO 8601 with a zone, e.g. the generated_at of "
              "a previous answer): what a polling dashboard fetches"),
        query("sort", {**enum(["updated", "pending_since"]), "default": "updated"},
              "updated: newest change first; pending_since: pending customers, oldest first"),
        limit(50), NEXT_PAGE, IF_NONE_MATCH]),
    ("GET", "/v1/customers/{id}"): _op("getCustomer", {
        **_customer("The customer"), "304": answer("Not modified since the ETag in If-None-Match", headers=ETAG)},
        (404,), parameters=[IF_NONE_MATCH]),
    ("POST", "/v1/customers/{id}/uploads"): _op("reportUpload", _customer("The customer, pending if the upload "
                                                "started the review"), (*JSON_BODY, 404, 409, 422), body=ref("Upload")),
    ("POST", "/v1/customers/{id}/submit"): _op("submitCustomer", _customer("The customer, now pending"),
                                               (404, 409)),
    ("POST", "/v1/customers/{id}/poll"): _op("pollCustomer", {
        "200": answer("The customer after the poll, and what the poll found", ref("PollResult"), ETAG)},
        (404, 409)),
    ("POST", "/v1/customers/{id}/state"): _op("setCustomerState", _customer("The customer in its new state"),
                                              (*JSON_BODY, 404, 409, 422), body=ref("SetState")),
    ("GET", "/v1/customers/{id}/explain"): _op("explainCustomer", {
        "200": answer("Why it is in its state: its moves, the events that moved nothing, its tier and polls, as "
                      "data and as sentences", ref("Explanation"))}, (404,)),
    ("GET", "/v1/customers/{id}/history"): _op("customerHistory", {
        "200": answer("The customer, its transitions, the events behind them and its uploads", ref("History"))},
        (404,)),
    ("GET", "/v1/alerts"): _op("listAlerts", {"200": answer("A page of alerts, newest first", ref("AlertList"))},
                               (400,), parameters=[
        query("state", enum(ALERT_STATES), "only alerts in this state (none: all)"), PROVIDER, CUSTOMER_ID,
        limit(50), NEXT_PAGE,
        query("before", ID, "the older paging (not with cursor): alerts older than this id", deprecated=True)]),
    ("POST", "/v1/alerts/{id}/acknowledge"): _op("acknowledgeAlert", {
        "200": answer("The alert, acknowledged", ref("Alert"))}, (404,)),
    ("GET", "/v1/summary"): _op("summary", {"200": answer("Counts by provider, state and tier", ref("Summary"))}),
    ("GET", "/v1/stream"): _op("stream", {"200": answer(
        "Server-Sent Events without end: each has its feed id, the event name (its kind) and JSON data; an idle "
        "stream gets a comment line now and then", ref("StreamEvent"), media="text/event-stream")}, (400,),
        parameters=[PROVIDER, CUSTOMER_ID,
                    query("last_event_id", {**ID, "minimum": 0}, "as Last-Event-ID, when that is not sent"),
                    param("Last-Event-ID", "header", {**ID, "minimum": 0},
                          "the id of the last event received: the stream resumes after it")]),
    ("GET", "/v1/events"): _op("listEvents", {"200": answer("A page of stored events, newest first (no bodies)",
                                                            ref("EventList"))}, (400,), parameters=[
        PROVIDER, query("outcome", enum(OUTCOMES), "only events with this outcome"), CUSTOMER_ID, limit(50),
        NEXT_PAGE]),
    ("POST", "/v1/events/{id}/replay"): _op("replayEvent", {
        "200": answer("What applying it again did", ref("Replay"))}, (404,)),
    ("GET", "/healthz"): _op("healthz", {"200": answer("Alive", ref("Health"))}),
    ("GET", "/readyz"): _op("readyz", {"200": answer("Ready", ref("Readiness")),
                                       "503": answer("Not ready: the problems say why", ref("Readiness"))}),
    ("GET", "/metrics"): _op("metrics", {"200": answer("Prometheus text format", {"type": "string"},
                                                       media="text/plain")}, (503,)),
    ("GET", "/openapi.json"): _op("openapi", {"200": answer("This document", {"type": "object"})}),
}


def _access(scope: str) -> dict[str, Any]:
    return {"security": [{"apiKey": []}], "description": f"Needs an API key with scope {scope} (or wider).",
            "responses": errors(401, 403, 503)}


def customer_ops() -> dict[str, dict[str, Any]]:
    """Who may call a route, by the key in the route table's last column."""
    return {"register": _access("write"), "upload": _access("write"), "submit": _access("write"),
            "list": _access("read"), "get": _access("read"), "read": _access("read"), "events": _access("read"),
            "stream": _access("read"),
            "set_state": _access("admin"), "poll": _access("admin"), "admin": _access("admin"),
            "webhook": {"description": "Authenticated by the provider's signature (connectFi: the path token)."}}


def document(routes: list[tuple[str, str, str, dict[str, Any]]]) -> dict[str, Any]:
    """``routes``: (path, method, summary, ``customer_ops()[key]`` or {})."""
    paths: dict[str, Any] = {}
    for path, method, summary, access in routes:
        spec = OPERATIONS.get((method, path), {"responses": {"200": answer("OK")}})
        operation: dict[str, Any] = {"summary": summary, **access, **spec}
        operation["responses"] = dict(sorted({**access.get("responses", {}), **spec["responses"]}.items()))
        parameters = [PATH_PARAMETERS[name] for name in re.findall(r"{(\w+)}", path)]
        parameters += WEBHOOK_HEADERS.get(path, []) + spec.get("parameters", [])
        if parameters:
            operation["parameters"] = parameters
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "tracker", "version": tracker.__version__,
                 "description": "KYC/KYB verification tracking across Blaaiz, connectFi and CryptoPocket. Errors "
                                "are {\"error\": {\"code\", \"message\"}}."},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "a key from tracker keys create"}}},
    }
