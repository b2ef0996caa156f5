"""The OpenAPI document's component schemas: every request and answer body, field by field as the handlers write
them (``customer_json``, ``alert_json``, ``event_json``, the history, the summary). JSON Schema 2020-12, as
OpenAPI 3.1 has it: a value that may be null has a type array (``["string", "null"]``)."""

from __future__ import annotations

from typing import Any

from tracker.customers import (
    CONNECTFI_DOCUMENT_TYPES,
    CRYPTOPOCKET_DOCUMENT_TYPES,
    CUSTOMER_TYPES,
    ID_TEXT,
    MAX_DOCUMENT_TYPE,
    MAX_REASON,
)
from tracker.domain.escalation import Tier
from tracker.domain.events import MAX_ID
from tracker.domain.lifecycle import PROVIDERS, Source, State, Trigger
from tracker.inbox.listing import OUTCOMES
from tracker.providers import blaaiz

Schema = dict[str, Any]

STATES = [state.value for state in State]
TIERS = [tier.value for tier in Tier]
ALERT_STATES = ["open", "acknowledged", "resolved"]
NO_NUL = r"^[^\x00]*$"  # PostgreSQL's text never holds a NUL character
UPLOAD_SLOTS = list(dict.fromkeys([*blaaiz.UPLOAD_SLOTS, *CONNECTFI_DOCUMENT_TYPES, *CRYPTOPOCKET_DOCUMENT_TYPES]))


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """``schema`` or null."""
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    widened = {**schema, "type": [schema["type"], "null"]}
    if "enum" in schema:
        widened["enum"] = [*schema["enum"], None]
    return widened


def obj(properties: dict[str, Schema], optional: tuple[str, ...] = (), **extra: Any) -> Schema:
    """An object with these properties, all of them always present except ``optional``."""
    return {"type": "object", "required": [name for name in properties if name not in optional],
            "properties": properties, **extra}


def enum(values: Any) -> Schema:
    return {"type": "string", "enum": list(values)}


TEXT: Schema = {"type": "string"}
TIME: Schema = {"type": "string", "format": "date-time"}
INT: Schema = {"type": "integer"}
COUNT: Schema = {"type": "integer", "minimum": 0}
ID: Schema = {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_ID}
WHEN = nullable(TIME)
MAYBE_TEXT = nullable(TEXT)
MAYBE_ID = nullable(ID)
NOTES: Schema = {"type": "array", "items": TEXT}

CUSTOMER = obj({
    "id": ID, "provider": enum(PROVIDERS), "provider_customer_id": TEXT, "reference": MAYBE_TEXT,
    "application_id": MAYBE_TEXT,
    "customer_type": {**enum([*CUSTOMER_TYPES, "unknown"]),
                      "description": "unknown: discovered by a webhook before it was registered"},
    "state": enum(STATES),
    "provider_status": {**MAYBE_TEXT, "description": "the provider's own value, as it sent it"},
    "tier": enum(TIERS),
    "next_tier": {**nullable(enum(TIERS[1:])), "description": "the tier the SLA clock reaches next"},
    "next_tier_at": {**WHEN, "description": "when it reaches next_tier"},
    "pending_since": WHEN,
    "pending_seconds": {**nullable(INT), "description": "age of the pending review at the time of the answer"},
    "decided_at": WHEN, "rejection_reason": MAYBE_TEXT, "attempts": COUNT, "rejections": COUNT,
    "discovered_by": {**TEXT, "description": "api (registered) or webhook (first heard of from the provider)"},
    "flags": NOTES, "created_at": TIME, "updated_at": TIME, "version": {**COUNT, "minimum": 1},
    "last_polled_at": WHEN, "next_poll_at": WHEN,
    "last_poll_error": {**MAYBE_TEXT, "description": "why the last poll failed; null after a good one"},
    "last_signal_at": {**WHEN, "description": "when the tracker last heard from the provider about this "
                                              "customer: a webhook (one that moved nothing too) or a poll answer"},
    "warnings": {**NOTES, "description": "only in answers to writes: what the caller should know"},
}, optional=("warnings",))

TRANSITION = obj({
    "id": ID, "from": nullable(enum(STATES)), "to": enum(STATES), "trigger": enum(Trigger),
    "source": enum(Source), "event": {**MAYBE_ID, "description": "the stored inbound event it came from"},
    "provider_status": MAYBE_TEXT, "provider_time": WHEN, "recorded_at": TIME, "actor": MAYBE_TEXT,
    "comment": MAYBE_TEXT, "version": {**COUNT, "minimum": 1},
})
_EVENT_FIELDS: dict[str, Schema] = {
    "id": ID, "provider": enum(PROVIDERS), "event_id": {**MAYBE_TEXT, "description": "the provider's own id"},
    "event_type": MAYBE_TEXT, "provider_status": MAYBE_TEXT, "provider_time": WHEN, "received_at": TIME,
    "processed_at": WHEN, "outcome": enum(OUTCOMES), "reason": MAYBE_TEXT,
    "duplicate_of": {**MAYBE_ID, "description": "the event this one is a copy of"},
}
EVENT = obj({**_EVENT_FIELDS, "provider_customer_id": MAYBE_TEXT, "customer_id": MAYBE_ID, "attempts": COUNT})
UPLOAD_RECORD = obj({"slot": TEXT, "file_id": MAYBE_TEXT, "document_type": MAYBE_TEXT,
                     "flag": MAYBE_TEXT, "reported_at": TIME})
NOTIFICATION = obj({
    "channel": {**TEXT, "description": "slack, webhook, pagerduty, email or log"},
    "action": enum(["trigger", "repeat", "resolve"]), "state": enum(["pending", "sent", "failed"]),
    "attempts": COUNT, "last_error": MAYBE_TEXT, "sent_at": WHEN, "key": {**TEXT, "description": "idempotency key"},
})
ALERT = obj({
    "id": ID, "key": TEXT, "kind": enum(["overdue", "critical", "conflict", "unknown_status", "incident"]),
    "provider": enum(PROVIDERS), "customer_id": MAYBE_ID, "attempt": nullable(COUNT), "state": enum(ALERT_STATES),
    "title": TEXT, "advice": MAYBE_TEXT, "incident_id": {**MAYBE_ID, "description": "the provider incident it is in"},
    "opened_at": TIME, "acknowledged_at": WHEN, "acknowledged_by": MAYBE_TEXT, "resolved_at": WHEN,
    "repeats": COUNT, "notifications": {"type": "array", "items": ref("Notification")},
})
_NEXT = {**MAYBE_TEXT, "description": "pass as cursor for the next page; null on the last"}


def page(item: str) -> Schema:
    return obj({"items": {"type": "array", "items": ref(item)}, "next_cursor": _NEXT})


def counts(names: list[str]) -> Schema:
    return {"type": "object", "propertyNames": {"enum": names}, "additionalProperties": COUNT}


PROVIDER_SUMMARY = obj({
    "states": counts(STATES), "tiers": {**counts(TIERS), "description": "pending customers by tier"},
    "oldest_pending_seconds": nullable(INT),
    "oldest_pending_customer": nullable(obj({"id": ID, "provider_customer_id": TEXT, "pending_since": TIME})),
    "health": obj({"polled": {"type": "boolean"}, "breaker": enum(["closed", "open", "half_open"]),
                   "breaker_open_until": WHEN, "blocked_until": WHEN, "last_error": MAYBE_TEXT,
                   "last_error_at": WHEN,
                   "last_success_at": {**WHEN, "description": "the last poll answered (to within 30 s)"},
                   "last_webhook_at": {**WHEN, "description": "the last webhook applied (to within 30 s)"}}),
})

_TEXT_ID: Schema = {"type": ["string", "integer"], "pattern": ID_TEXT,
                    "description": "1 to 128 letters, digits or ._:@/+=- (a whole number is taken as its text)"}
_OPTIONAL_ID: Schema = {"type": ["string", "integer", "null"], "pattern": ID_TEXT.replace("{1,128}", "{0,128}"),
                        "description": "as provider_customer_id; empty or null: none"}

_STEP = {"at": TIME, "event": {**MAYBE_ID, "description": "the stored event"}, "provider_status": MAYBE_TEXT,
         "provider_time": WHEN, "reason": MAYBE_TEXT}
EXPLANATION = obj({
    "customer_id": ID, "state": enum(STATES),
    "steps": {"type": "array", "description": "oldest first", "items": {"anyOf": [
        obj({**_STEP, "kind": enum(["move"]), "source": enum(Source), "trigger": enum(Trigger),
             "from": nullable(enum(STATES)), "to": enum(STATES), "actor": MAYBE_TEXT,
             "rule": {**TEXT, "description": "the lifecycle rule it applied"}}),
        obj({**_STEP, "kind": enum(["event"]), "source": enum(["webhook"]), "event_type": MAYBE_TEXT,
             "outcome": enum(OUTCOMES)}, description="a stored event that moved nothing, and why")]}},
    "tier": obj({"current": enum(TIERS), "next": nullable(enum(TIERS[1:])), "next_at": WHEN}),
    "polling": obj({"last_polled_at": WHEN, "next_poll_at": WHEN, "last_poll_error": MAYBE_TEXT}),
    "text": {**NOTES, "description": "the same, in sentences"},
})

_CHANGE = {"id": {**ID, "description": "its feed id, as the event's id"}, "provider": enum(PROVIDERS),
           "customer_id": MAYBE_ID, "at": TIME}
CHANGE = {"anyOf": [
    obj({**_CHANGE, "kind": enum(["transition"]), "from": nullable(enum(STATES)), "to": enum(STATES),
         "trigger": enum(Trigger), "source": enum(Source), "version": {**COUNT, "minimum": 1}, "event_id": MAYBE_ID,
         "tier": enum(TIERS)}, optional=("tier",)),
    obj({**_CHANGE, "kind": enum(["alert"]), "alert_id": ID, "action": enum(["raised", "resolved", "acknowledged"]),
         "alert_kind": ALERT["properties"]["kind"], "incident_id": MAYBE_ID})]}
STREAM_EVENT = obj({
    "id": {**TEXT, "pattern": "^[0-9]+$", "description": "send it back as Last-Event-ID to resume after it"},
    "event": enum(["transition", "alert"]),
    "data": {**TEXT, "contentMediaType": "application/json", "contentSchema": CHANGE},
    "retry": {**COUNT, "description": "milliseconds a client waits before reconnecting"},
}, optional=("retry",), description="one Server-Sent Event")

SCHEMAS: dict[str, Schema] = {
    "Error": obj({"error": obj({
        "code": {**TEXT, "description": "stable, e.g. bad_request, invalid, not_found, conflict, unauthorized"},
        "message": {**TEXT, "description": "what went wrong and what to do, for a person"}})}),
    "Customer": CUSTOMER,
    "CustomerList": page("Customer"),
    "Transition": TRANSITION,
    "CustomerEvent": obj(_EVENT_FIELDS),
    "UploadRecord": UPLOAD_RECORD,
    "History": obj({"customer": ref("Customer"), "transitions": {"type": "array", "items": ref("Transition")},
                    "events": {"type": "array", "items": ref("CustomerEvent")},
                    "uploads": {"type": "array", "items": ref("UploadRecord")}}),
    "Explanation": EXPLANATION,
    "StreamEvent": STREAM_EVENT,
    "Notification": NOTIFICATION,
    "Alert": ALERT,
    "AlertList": {**page("Alert"), "properties": {
        **page("Alert")["properties"],
        "next_before": {**MAYBE_ID, "deprecated": True, "description": "the older paging: pass as before"}}},
    "ProviderSummary": PROVIDER_SUMMARY,
    "Summary": obj({"providers": obj({p: ref("ProviderSummary") for p in PROVIDERS}), "generated_at": TIME}),
    "Event": EVENT,
    "EventList": page("Event"),
    "Replay": obj({"event": ID, "outcome": enum(OUTCOMES), "reason": MAYBE_TEXT, "customer_id": MAYBE_ID}),
    "PollResult": obj({"customer": ref("Customer"), "poll": obj({
        "outcome": enum(["changed", "unchanged", "failed"]), "provider_status": MAYBE_TEXT,
        "error": {**MAYBE_TEXT, "description": "why the poll failed (outcome failed)"}})}),
    "Register": obj({
        "provider": enum(PROVIDERS), "provider_customer_id": _TEXT_ID, "customer_type": enum(CUSTOMER_TYPES),
        "reference": {**_OPTIONAL_ID, "description": "the client's own key, the same across providers"},
        "application_id": {**_OPTIONAL_ID, "description": "connectFi: the application the customer is in"},
    }, optional=("reference", "application_id"), additionalProperties=False),
    "Upload": obj({
        "slot": {**enum(UPLOAD_SLOTS), "description": "Blaaiz: id_file, id_file_back, proof_of_address_file, "
                 "liveness_check_file; connectFi and CryptoPocket: one of their document types"},
        "file_id": {**_OPTIONAL_ID, "description": "the provider's file id"},
        "document_type": {**MAYBE_TEXT, "maxLength": MAX_DOCUMENT_TYPE, "pattern": NO_NUL,
                          "description": "required for Blaaiz id_file: "
                          f"{', '.join(blaaiz.ID_TYPES_ACCEPTED)} (id_card is refused with 422)"},
    }, optional=("file_id", "document_type"), additionalProperties=False),
    "SetState": obj({
        "state": enum(STATES),
        "reason": {**TEXT, "minLength": 1, "maxLength": MAX_REASON, "pattern": r"^[^\x00]*[^\x00\s][^\x00]*$",
                   "description": "why; kept in the history with the key's name"},
    }, additionalProperties=False),
    "WebhookAnswer": obj({"status": {**enum(["accepted", "duplicate", "ignored"]), "description":
                                     "ignored: an event type the tracker does not follow"},
                          "event": {**ID, "description": "the stored event's id (GET /v1/events)"}}),
    "Health": obj({"status": enum(["ok"])}),
    "Readiness": obj({"status": enum(["ready", "unavailable"]), "problems": NOTES}, optional=("problems",)),
}
