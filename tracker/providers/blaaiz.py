"""Blaaiz: signed customer webhooks (PROVIDERS.md, Blaaiz).

Signature: ``x-blaaiz-signature`` = lowercase hex HMAC-SHA256(secret, f"{x-blaaiz-timestamp}.{raw body}").
Several secrets may be valid at once (rotation). The timestamp window is configurable; 0 turns it off.
The meaning of an event is keyed on ``new_status``; the event names ``customer.verified`` /
``customer.rejected`` stand for their status when ``new_status`` is absent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from tracker.clock import Clock
from tracker.domain.events import ParsedEvent, ParseError
from tracker.domain.lifecycle import Signal, Source, Trigger
from tracker.providers.base import (
    CustomerRef,
    ProviderError,
    StatusReport,
    TokenCache,
    json_body,
    status_error,
    transport_error,
    unix_time,
)

NAME = "blaaiz"
SIGNATURE_HEADER = "x-blaaiz-signature"
TIMESTAMP_HEADER = "x-blaaiz-timestamp"

# verification_status / new_status -> lifecycle trigger. PENDING means both "nothing submitted" and "under
# review" at Blaaiz: on its own it moves nothing.
STATUS_TRIGGERS: dict[str, Trigger | None] = {
    "PENDING": None,
    "PROCESSING": Trigger.PROVIDER_REVIEWING,
    "VERIFIED": Trigger.PROVIDER_APPROVED,
    "REJECTED": Trigger.PROVIDER_REJECTED,
}
CUSTOMER_EVENTS = {
    "customer.status_changed": None,
    "customer.verified": "VERIFIED",
    "customer.rejected": "REJECTED",
    "customer.created": "PENDING",
}
# Fields kept from the payload. Everything else (``customer_email`` above all) is dropped before storage.
KEPT_FIELDS = ("event_type", "event_id", "type", "customer_id", "old_status", "new_status", "comment",
               "updated_at", "message")
ID_TYPES_ACCEPTED = ("drivers_license", "passport", "resident_permit")
ID_TYPES_REFUSED = {"id_card": "national ID cards are not accepted by Blaaiz"}
UPLOAD_SLOTS = ("id_file", "id_file_back", "proof_of_address_file", "liveness_check_file")
REVIEW_STARTING_SLOT = "id_file"


class SignatureError(ValueError):
    """Why a delivery's signature was refused (for the 401 answer; never includes secrets)."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    message = timestamp.encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(headers: Mapping[str, str], body: bytes, secrets: Sequence[str], now: datetime,
           tolerance_seconds: int) -> None:
    """Raise ``SignatureError`` unless one of ``secrets`` signed ``body`` within the timestamp window."""
    if not secrets:
        raise SignatureError("no Blaaiz signing secret is configured (TRACKER_BLAAIZ_WEBHOOK_SECRETS)")
    signature = headers.get(SIGNATURE_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not signature:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    if not timestamp:
        raise SignatureError(f"missing {TIMESTAMP_HEADER} header")
    try:
        sent_at = int(timestamp.strip())
    except ValueError:
        raise SignatureError(f"{TIMESTAMP_HEADER} is not unix seconds") from None
    try:
        skew = abs(now.timestamp() - sent_at)
    except OverflowError:  # more digits than a float holds: no time near now
        skew = math.inf
    if tolerance_seconds and skew > tolerance_seconds:
        raise SignatureError(
            f"{TIMESTAMP_HEADER} is outside the allowed window of {tolerance_seconds} s; check the sender's clock"
        )
    # Compared as bytes: compare_digest raises TypeError for text with non-ASCII characters.
    given = signature.strip().lower().removeprefix("sha256=").encode("utf-8", "surrogatepass")
    matched = False
    for secret in secrets:
        # Check every secret, so the time taken does not say which one matched.
        matched |= hmac.compare_digest(sign(secret, timestamp.strip(), body).encode(), given)
    if not matched:
        raise SignatureError("signature does not match the body with any configured secret")


def parse_time(value: Any) -> datetime | None:
    """Blaaiz timestamps: ISO 8601 with or without zone (UTC assumed), or unix seconds; None when absent.
    Raises ValueError for a value that is present but is no time: ordering by it is impossible, and treating
    it as absent would skip the stale check."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return unix_time(value)
    if not isinstance(value, str):
        raise ValueError(f"{type(value).__name__} is not a time")
    text = value.strip().replace(" ", "T", 1)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{value[:40]!r} is not an ISO 8601 time") from None
    try:
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00: before year 1 once in UTC
        raise ValueError(f"{value[:40]!r} is out of the range of times once in UTC") from None


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


# --- status reads (polling) ----------------------------------------------------------------------------

def map_status(customer: Mapping[str, Any]) -> StatusReport:
    """Map a Blaaiz customer record (``data`` of GET /api/external/customer/{id}) to the lifecycle. Pure."""
    raw = customer.get("verification_status")
    if not isinstance(raw, str) or not raw:
        raise ParseError("the customer record has no verification_status")
    status = raw.strip().upper()
    known = status in STATUS_TRIGGERS
    comment: str | None = None
    flags: tuple[str, ...] = ()
    if status == "REJECTED":
        comments = [str(item["admin_comments"]) for key in ("owners", "documents")
                    for item in customer.get(key) or () if isinstance(item, dict) and item.get("admin_comments")]
        comment = "; ".join(comments) or None
        if customer.get("type") == "business" and not comments:
            # PROVIDERS.md: a rejected business with no admin comments is itself a case for Blaaiz support.
            flags = ("rejected_without_comments",)
    try:
        provider_time = parse_time(customer.get("updated_at"))
    except ValueError:  # the status read is still the provider's word; only the stale check goes without it
        provider_time = None
    signal = Signal(trigger=STATUS_TRIGGERS.get(status), source=Source.POLL, provider_status=status,
                    provider_time=provider_time, comment=comment)
    return StatusReport(str(customer.get("id", "")), status, signal, unknown=not known, flags=flags,
                        detail={"type": customer.get("type")})


class BlaaizAdapter:
    """Blaaiz API: OAuth client credentials (900 s tokens, renewed early), customer status reads."""

    name = NAME
    scope = "customer:read"
    # The lists a batch reconciliation reads: customers found there are still under review.
    in_review_statuses = ("PROCESSING", "PENDING")

    def __init__(self, client: httpx.AsyncClient, clock: Clock, base_url: str, client_id: str,
                 client_secret: str) -> None:
        self.client = client
        self.clock = clock
        self.base_url = base_url.rstrip("/")
        self._credentials = {"grant_type": "client_credentials", "client_id": client_id,
                             "client_secret": client_secret, "scope": self.scope}
        self.tokens = TokenCache(clock, self._fetch_token)
        self.rate_limit: dict[str, str] = {}

    async def _fetch_token(self) -> tuple[str, datetime]:
        try:
            response = await self.client.post(f"{self.base_url}/oauth/token", data=self._credentials)
        except httpx.HTTPError as exc:
            raise transport_error(NAME, exc) from None
        body = json_body(NAME, response)
        if response.status_code != 200:
            raise status_error(NAME, response, _message(body, "token refused"), self.clock.now())
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise ProviderError(NAME, "unexpected", "the token answer has no access_token")
        try:
            lifetime = float(body.get("expires_in", 900))
        except (TypeError, ValueError):
            lifetime = 900.0
        return token, self.clock.now() + timedelta(seconds=lifetime)

    async def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET with the bearer token; one re-authentication and one retry on 401, never a loop."""
        for attempt in (1, 2):
            token = await self.tokens.get()
            try:
                response = await self.client.get(f"{self.base_url}{path}", params=params,
                                                 headers={"authorization": f"Bearer {token}",
                                                          "accept": "application/json"})
            except httpx.HTTPError as exc:
                raise transport_error(NAME, exc) from None
            self.rate_limit = {k: v for k, v in response.headers.items() if k.lower().startswith("x-ratelimit-")}
            if response.status_code == 401 and attempt == 1:
                self.tokens.invalidate(token)
                continue
            body = json_body(NAME, response)
            if response.status_code != 200 or (isinstance(body, dict) and body.get("status") is False):
                raise status_error(NAME, response, _message(body, "request refused"), self.clock.now())
            return body
        raise AssertionError("unreachable")

    async def fetch_status(self, customer: CustomerRef) -> StatusReport:
        body = await self._get(f"/api/external/customer/{quote(customer.provider_customer_id, safe='')}")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise ProviderError(NAME, "unexpected", "the customer answer has no data object")
        try:
            report = map_status(data)
        except ParseError as exc:
            raise ProviderError(NAME, "unexpected", str(exc)) from None
        if not report.provider_customer_id:
            report = replace(report, provider_customer_id=customer.provider_customer_id)
        return report

    async def list_page(self, verification_status: str, customer_type: str, page: int) -> tuple[list[StatusReport],
                                                                                               bool]:
        """One page (15, newest first) of customers with a given status; returns the reports and whether more
        pages follow."""
        body = await self._get("/api/external/customer", {
            "verification_status": verification_status, "type": customer_type, "paginate": "true",
            "page": str(page)})
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, list):  # not paginated after all
            items, more = data, False
        elif isinstance(data, dict) and isinstance(data.get("data"), list):
            items = data["data"]
            last = data.get("last_page")
            more = bool(data.get("next_page_url")) or (isinstance(last, int) and page < last)
        else:
            raise ProviderError(NAME, "unexpected", "the list answer has no data")
        reports = []
        for item in items:
            if isinstance(item, dict) and item.get("id") is not None:
                try:
                    reports.append(map_status(item))
                except ParseError:
                    continue
        return reports, more


def _message(body: Any, default: str) -> str:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return default
