"""CryptoPocket: token auth (``auth`` header), KYC status reads, signed webhooks.

Most errors come back as HTTP 200 with ``{"status": "error", "error": "<code>"}``: the body is always read.
Webhook signature: HMAC-SHA256 with our api_secret over the JSON body followed directly by the timestamp;
hex or base64 (undocumented, both accepted); timestamps older than 5 minutes are refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import httpx

from tracker.clock import Clock
from tracker.domain.events import ParsedEvent, ParseError
from tracker.domain.lifecycle import Signal, Source, Trigger
from tracker.providers.base import (
    CustomerRef,
    ErrorKind,
    ProviderError,
    StatusReport,
    TokenCache,
    json_body,
    status_error,
    transport_error,
    unix_time,
)

NAME = "cryptopocket"
KEY_HEADER = "x-api-key"
SIGNATURE_HEADER = "x-signature"
TIMESTAMP_HEADER = "x-timestamp"
WINDOW_SECONDS = 300
TOKEN_LIFETIME = timedelta(minutes=30)  # not documented; a refused token is renewed once anyway

STATUS_TRIGGERS: dict[str, Trigger | None] = {
    "valid": Trigger.PROVIDER_APPROVED,
    "fail": Trigger.PROVIDER_REJECTED,
    "processing": Trigger.PROVIDER_REVIEWING,
    "unused": None,
}
KEPT_FIELDS = ("event", "type", "user_id", "userId", "kyc_status", "timestamp", "id", "event_id")


class SignatureError(ValueError):
    pass


def _bytes(text: str) -> bytes:
    """Header text as bytes for compare_digest, which raises TypeError for text with non-ASCII characters."""
    return text.encode("utf-8", "surrogatepass")


def signature_matches(secret: str, body: bytes, timestamp: str, given: str) -> bool:
    digest = hmac.new(secret.encode(), body + timestamp.encode(), hashlib.sha256).digest()
    candidate = given.strip().removeprefix("sha256=")
    if hmac.compare_digest(digest.hex().encode(), _bytes(candidate.lower())):
        return True
    try:
        decoded = base64.b64decode(candidate, validate=True)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(digest, decoded)


def verify(headers: Mapping[str, str], body: bytes, api_key: str | None, api_secret: str | None,
           now: datetime) -> None:
    if not api_key or not api_secret:
        raise SignatureError("CryptoPocket webhooks need TRACKER_CRYPTOPOCKET_API_KEY and _API_SECRET")
    # Header names are case-insensitive (the docs write X-API-Key); a plain dict must not make them case-sensitive.
    lowered = {name.lower(): value for name, value in headers.items()}
    key = lowered.get(KEY_HEADER)
    signature = lowered.get(SIGNATURE_HEADER)
    timestamp = lowered.get(TIMESTAMP_HEADER)
    if not key or not hmac.compare_digest(_bytes(key.strip()), _bytes(api_key)):
        raise SignatureError("missing or unknown X-API-Key")
    if not signature:
        raise SignatureError("missing X-Signature header")
    if not timestamp:
        raise SignatureError("missing X-Timestamp header")
    try:
        sent_at = int(timestamp.strip())
    except ValueError:
        raise SignatureError("X-Timestamp is not unix seconds") from None
    try:
        skew = abs(now.timestamp() - sent_at)
    except OverflowError:  # more digits than a float holds: no time near now
        skew = math.inf
    if skew > WINDOW_SECONDS:
        raise SignatureError("X-Timestamp is more than 5 minutes away; check the sender's clock")
    if not signature_matches(api_secret, body, timestamp.strip(), signature):
        raise SignatureError("signature does not match the body")


def map_kyc_status(raw: Any, source: Source) -> tuple[str, Signal, bool]:
    if not isinstance(raw, str) or not raw:
        raise ParseError("missing field kyc_status")
    key = raw.strip().lower()
    known = key in STATUS_TRIGGERS
    return key, Signal(STATUS_TRIGGERS.get(key), source, provider_status=key), not known


def scrub(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The fields ``parse`` reads, also under ``data``: the applier parses the stored body again."""
    kept = {key: payload[key] for key in KEPT_FIELDS if key in payload}
    data = payload.get("data")
    if isinstance(data, Mapping):
        kept["data"] = {key: data[key] for key in KEPT_FIELDS if key in data}
    return kept


def parse(payload: Any) -> ParsedEvent:
    """The KYC webhook payload is not documented: expect at least the user id and the new kyc_status."""
    if not isinstance(payload, dict):
        raise ParseError("the body must be a JSON object")
    data = payload.get("data") if isinstance(payload.get("data"), dict) else payload
    assert isinstance(data, dict)
    user_id = data.get("user_id", data.get("userId"))
    if user_id in (None, "") or not isinstance(user_id, str | int):
        raise ParseError("missing field user_id")
    raw, signal, unknown = map_kyc_status(data.get("kyc_status"), Source.WEBHOOK)
    when = data.get("timestamp") or payload.get("timestamp")
    if isinstance(when, int | float) and not isinstance(when, bool):
        try:
            signal = Signal(signal.trigger, signal.source, signal.provider_status, unix_time(when), signal.comment)
        except ValueError as exc:
            raise ParseError(f"timestamp cannot be read: {exc}") from None
    event_id = payload.get("event_id") or payload.get("id")
    content = [NAME, str(user_id), raw, when]
    return ParsedEvent(NAME, str(payload.get("event") or payload.get("type") or "kyc"),
                       str(event_id) if event_id not in (None, "") else None,
                       hashlib.sha256(json.dumps(content, default=str).encode()).hexdigest(), str(user_id), None,
                       signal, ignore_reason=f"unknown CryptoPocket kyc_status {raw!r} kept as is" if unknown else None,
                       unknown_status=unknown)


class CryptoPocketAdapter:
    name = NAME

    def __init__(self, client: httpx.AsyncClient, clock: Clock, base_url: str, api_key: str, api_secret: str
                 ) -> None:
        self.client = client
        self.clock = clock
        base = base_url.rstrip("/")
        # The documented base ends in /api; every path is sent under it once (never /api/api/...).
        self.base_url = base if base.endswith("/api") else f"{base}/api"
        self._credentials = {"api_key": api_key, "api_secret": api_secret}
        self.tokens = TokenCache(clock, self._fetch_token)

    async def _fetch_token(self) -> tuple[str, datetime]:
        try:
            response = await self.client.post(f"{self.base_url}/authenticate", json=self._credentials)
        except httpx.HTTPError as exc:
            raise transport_error(NAME, exc) from None
        body = json_body(NAME, response)
        _raise_for_error(response, body, self.clock.now())
        token = None
        if isinstance(body, dict):
            data = body.get("data")
            token = body.get("token") or body.get("auth") or (data.get("token") if isinstance(data, dict) else None)
        if not isinstance(token, str) or not token:
            raise ProviderError(NAME, "unexpected", "the authenticate answer has no token")
        return token, self.clock.now() + TOKEN_LIFETIME

    async def fetch_status(self, customer: CustomerRef) -> StatusReport:
        path = f"{self.base_url}/kyc/check"
        for attempt in (1, 2):
            token = await self.tokens.get()
            try:
                response = await self.client.get(path, params={"user_id": customer.provider_customer_id},
                                                  headers={"auth": token})
            except httpx.HTTPError as exc:
                raise transport_error(NAME, exc) from None
            body = json_body(NAME, response)
            try:
                _raise_for_error(response, body, self.clock.now())
            except ProviderError as exc:
                if exc.code == "authorization_incorrect" and attempt == 1:
                    self.tokens.invalidate(token)
                    continue
                raise
            if not isinstance(body, dict):
                raise ProviderError(NAME, "unexpected", "the kyc/check answer is not a JSON object",
                                    status_code=response.status_code)
            try:
                raw, signal, unknown = map_kyc_status(body.get("kyc_status"), Source.POLL)
            except ParseError as exc:
                raise ProviderError(NAME, "unexpected", str(exc)) from None
            return StatusReport(customer.provider_customer_id, raw, signal, unknown=unknown)
        raise AssertionError("unreachable")


def _raise_for_error(response: httpx.Response, body: Any, now: datetime) -> None:
    code = None
    if isinstance(body, dict) and body.get("status") == "error":
        code = str(body.get("error") or body.get("message") or "error")
    elif isinstance(body, dict) and isinstance(body.get("errors"), dict):
        code = "validation"
    if response.status_code == 200 and code is None:
        return
    error = status_error(NAME, response, code or "request refused", now, code)
    if response.status_code == 200:
        kinds: dict[str, ErrorKind] = {"authorization_incorrect": "auth", "user_not_found": "not_found",
                                       "user_not_in_integration": "forbidden"}
        error.kind = kinds.get(code or "", "invalid")
    elif code == "authorization_incorrect":
        error.kind = "auth"
    raise error


