"""The OpenAPI document, built from the route table so no route goes undescribed."""

from __future__ import annotations

import re
from typing import Any

import tracker
from tracker.domain.events import MAX_ID
from tracker.domain.lifecycle import PROVIDERS, State
from tracker.inbox.listing import OUTCOMES
from tracker.web.requests import MAX_PAGE

STATES = [state.value for state in State]

ERROR = {"$ref": "#/components/schemas/Error"}
CUSTOMER = {"$ref": "#/components/schemas/Customer"}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
    "Customer": {"type": "object", "properties": {
        "id": {"type": "integer"}, "provider": {"type": "string", "enum": list(PROVIDERS)},
        "provider_customer_id": {"type": "string"}, "reference": {"type": ["string", "null"]},
        "application_id": {"type": ["string", "null"]},
        "customer_type": {"type": "string", "enum": ["individual", "business", "unknown"]},
        "state": {"type": "string", "enum": STATES},
        "provider_status": {"type": ["string", "null"]},
        "tier": {"type": "string", "enum": ["none", "overdue", "critical"]},
        "next_tier": {"type": ["string", "null"], "enum": ["overdue", "critical", None]},
        "next_tier_at": {"type": ["string", "null"], "format": "date-time"},
        "pending_since": {"type": ["string", "null"], "format": "date-time"},
        "pending_seconds": {"type": ["integer", "null"]},
        "decided_at": {"type": ["string", "null"], "format": "date-time"},
        "rejection_reason": {"type": ["string", "null"]}, "attempts": {"type": "integer"},
        "rejections": {"type": "integer"}, "discovered_by": {"type": "string"},
        "flags": {"type": "array", "items": {"type": "string"}},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "version": {"type": "integer"}, "warnings": {"type": "array", "items": {"type": "string"}}}},
    "Register": {"type": "object", "required": ["provider", "provider_customer_id", "customer_type"], "properties": {
        "provider": {"type": "string", "enum": list(PROVIDERS)},
        "provider_customer_id": {"type": "string"}, "customer_type": {"type": "string",
                                                                      "enum": ["individual", "business"]},
        "reference": {"type": "string"}, "application_id": {"type": "string"}}},
    "Upload": {"type": "object", "required": ["slot"], "properties": {
        "slot": {"type": "string", "description": "Blaaiz: id_file, id_file_back, proof_of_address_file, "
                 "liveness_check_file; connectFi / CryptoPocket: a documented document type"},
        "file_id": {"type": "string"},
        "document_type": {"type": "string", "description": "for Blaaiz id_file: drivers_license, passport or "
                          "resident_permit (id_card is refused)"}}},
    "WebhookAnswer": {"type": "object", "properties": {
        "status": {"type": "string", "enum": ["accepted", "duplicate", "ignored", "stale"]},
        "event": {"type": "integer"}}},
}


def _json(schema: Any) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    words = {400: "Bad input", 401: "Missing or invalid credentials", 403: "Scope too small",
             404: "Not found", 409: "Conflicts with the customer's state", 413: "Body over 1 MiB",
             415: "Not JSON", 422: "Breaks a provider rule", 503: "Database unavailable; retry"}
    return {str(code): {"description": words[code], **_json(ERROR)} for code in codes}


def document(routes: list[tuple[str, str, str, dict[str, Any]]]) -> dict[str, Any]:
    """``routes``: (path, method, summary, extra operation fields)."""
    paths: dict[str, Any] = {}
    for path, method, summary, extra in routes:
        operation: dict[str, Any] = {"summary": summary, "responses": extra.pop("responses", {
            "200": {"description": "OK"}})}
        names = re.findall(r"{(\w+)}", path)
        if names:
            operation["parameters"] = [{"name": name, "in": "path", "required": True,
                                        "schema": {"type": "integer" if name == "id" else "string"}}
                                       for name in names]
        operation.update(extra)
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "tracker", "version": tracker.__version__,
                 "description": "KYC/KYB verification tracking across Blaaiz, connectFi and CryptoPocket."},
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "tracker keys create"}}},
    }


def customer_ops() -> dict[str, Any]:
    secured: dict[str, Any] = {"security": [{"apiKey": []}]}
    return {
        "register": {**secured, "requestBody": _json({"$ref": "#/components/schemas/Register"}),
                     "responses": {"201": {"description": "Registered", **_json(CUSTOMER)},
                                   "200": {"description": "Already registered", **_json(CUSTOMER)},
                                   **_errors(400, 401, 403, 409, 415)}},
        "upload": {**secured, "requestBody": _json({"$ref": "#/components/schemas/Upload"}),
                   "responses": {"200": {"description": "The customer", **_json(CUSTOMER)},
                                 **_errors(400, 401, 403, 404, 409, 415, 422)}},
        "submit": {**secured, "responses": {"200": {"description": "The customer, now pending", **_json(CUSTOMER)},
                                            **_errors(401, 403, 404, 409, 422)}},
        "set_state": {**secured, "requestBody": _json({
            "type": "object", "required": ["state", "reason"], "additionalProperties": False, "properties": {
                "state": {"type": "string", "enum": STATES},
                "reason": {"type": "string", "minLength": 1, "maxLength": 500}}}),
            "responses": {"200": {"description": "The customer, in its new state", **_json(CUSTOMER)},
                          **_errors(400, 401, 403, 404, 409, 422)}},
        "get": {**secured, "responses": {"200": {"description": "The customer (ETag)", **_json(CUSTOMER)},
                                         "304": {"description": "Not modified"}, **_errors(401, 403, 404)}},
        "list": {**secured, "parameters": [
            {"name": n, "in": "query", "required": False, "schema": {"type": "string"}}
            for n in ("provider", "state", "tier", "reference", "provider_customer_id", "pending_longer_than",
                      "limit", "cursor")],
            "responses": {"200": {"description": "A page, newest change first", **_json({
                "type": "object", "properties": {"items": {"type": "array", "items": CUSTOMER},
                                                 "next_cursor": {"type": ["string", "null"]}}})},
                "304": {"description": "Not modified"}, **_errors(400, 401, 403)}},
        "read": {**secured, "responses": {"200": {"description": "OK"}, **_errors(401, 403, 404)}},
        "events": {**secured, "parameters": [
            {"name": "provider", "in": "query", "required": False,
             "schema": {"type": "string", "enum": list(PROVIDERS)}},
            {"name": "outcome", "in": "query", "required": False, "schema": {"type": "string", "enum": list(OUTCOMES)}},
            {"name": "customer_id", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 50}},
            {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "A page of stored events, newest first (no bodies)", **_json({
                "type": "object", "properties": {"items": {"type": "array", "items": {"type": "object"}},
                                                 "next_cursor": {"type": ["string", "null"]}}})},
                **_errors(400, 401, 403)}},
        "admin": {**secured, "responses": {"200": {"description": "OK"}, **_errors(401, 403, 404)}},
        "webhook": {"requestBody": _json({"type": "object"}), "responses": {
            "200": {"description": "Stored", **_json({"$ref": "#/components/schemas/WebhookAnswer"})},
            **_errors(400, 401, 413, 415, 503)}},
    }
