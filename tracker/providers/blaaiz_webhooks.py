"""Blaaiz webhook payloads (PROVIDERS.md, Blaaiz): parsing a decoded body into a ``ParsedEvent``, the content
fingerprint that tells re-sends apart, and the scrubbing that keeps personal data out of storage.

The meaning of an event is keyed on ``new_status``; the event names ``customer.verified`` /
``customer.rejected`` stand for their status when ``new_status`` is absent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from tracker.domain.events import ParsedEvent, ParseError
from tracker.domain.lifecycle import Signal, Source
from tracker.providers.blaaiz_status import NAME, STATUS_TRIGGERS, parse_time

CUSTOMER_EVENTS = {
    "customer.status_changed": None,
    "customer.verified": "VERIFIED",
    "customer.rejected": "REJECTED",
    "customer.created": "PENDING",
}
# Fields kept from the payload. Everything else (``customer_email`` above all) is dropped before storage.
KEPT_FIELDS = ("event_type", "event_id", "type", "customer_id", "old_status", "new_status", "comment",
               "updated_at", "message")


def fingerprint(payload: Mapping[str, Any]) -> str:
    """Content identity of a delivery, without its event id: a re-send under a new id is still a duplicate.

    Customer events are identified by what they say (customer, statuses, time, comment); any other event by
    its whole content, so two different collection events never look alike."""
    if str(payload.get("event_type", "")) in CUSTOMER_EVENTS:
        content: Any = [NAME, *(payload.get(k) for k in ("customer_id", "event_type", "old_status", "new_status",
                                                         "updated_at", "comment"))]
    else:
        content = [NAME, {key: value for key, value in payload.items() if key != "event_id"}]
    return hashlib.sha256(json.dumps(content, default=str, sort_keys=True).encode()).hexdigest()


def scrub(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload without personal data: only the fields the tracker uses."""
    return {key: payload[key] for key in KEPT_FIELDS if key in payload}


def parse(payload: Any) -> ParsedEvent:
    """Parse a decoded webhook body. Raises ``ParseError`` naming what is missing or malformed."""
    if not isinstance(payload, dict):
        raise ParseError("the body must be a JSON object")
    event_type = payload.get("event_type")
    if not isinstance(event_type, str) or not event_type:
        raise ParseError("missing field event_type")
    event_id = payload.get("event_id")
    if event_id is not None and not isinstance(event_id, str | int):
        raise ParseError("event_id must be a string")
    event_id_text = str(event_id) if event_id not in (None, "") else None
    print_ = fingerprint(payload)
    if event_type not in CUSTOMER_EVENTS or payload.get("type", "customer") != "customer":
        return ParsedEvent(NAME, event_type, event_id_text, print_, None, None, None,
                           ignore_reason=f"event type {event_type!r} is not a customer status event")
    customer_id = payload.get("customer_id")
    if customer_id in (None, "") or not isinstance(customer_id, str | int):
        raise ParseError("missing field customer_id")
    status = payload.get("new_status") or CUSTOMER_EVENTS[event_type]
    if status is None:
        raise ParseError(f"missing field new_status (required for {event_type})")
    if not isinstance(status, str):
        raise ParseError("new_status must be a string")
    status = status.strip().upper()
    comment = payload.get("comment")
    known = status in STATUS_TRIGGERS
    try:
        provider_time = parse_time(payload.get("updated_at"))
    except ValueError as exc:
        raise ParseError(f"updated_at cannot be read: {exc}") from None
    signal = Signal(
        trigger=STATUS_TRIGGERS.get(status),
        source=Source.WEBHOOK,
        provider_status=status,
        provider_time=provider_time,
        comment=comment if isinstance(comment, str) else None,
    )
    return ParsedEvent(NAME, event_type, event_id_text, print_, str(customer_id), None, signal,
                       ignore_reason=None if known else f"unknown Blaaiz status {status!r} kept as is",
                       unknown_status=not known)
