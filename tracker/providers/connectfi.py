"""connectFi (PayGears) akepa journeys: token auth, status reads, and the unsigned callback.

The callback carries no signature, no event id and is not retried: the URL holds our own secret token, events
are de-duplicated on (applicationId, status, outcome), and polling is the backstop (PROVIDERS.md, connectFi).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

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
)

NAME = "connectfi"
TOKEN_HEADER = "x-connectfi-token"  # noqa: S105 (a header name, not a secret)

STATUS_TRIGGERS: dict[str, Trigger | None] = {
    "pending_step_up": Trigger.PROVIDER_REQUESTED_MORE,
    "pending_documents": Trigger.PROVIDER_REQUESTED_MORE,
    "data_request": Trigger.PROVIDER_REQUESTED_MORE,
    "waiting_review": Trigger.PROVIDER_REVIEWING,
    "pending_journey_application_review": Trigger.PROVIDER_REVIEWING,
    "running": Trigger.PROVIDER_REVIEWING,
    "completed": None,  # decided by ``outcome``
}
APPROVED_OUTCOMES = frozenset({"approved"})
KEPT_FIELDS = ("applicationId", "aggregatorId", "customerId", "status", "outcome", "entityApplications")


def map_application(data: Mapping[str, Any], source: Source) -> tuple[str, Signal, bool]:
    """(raw status, signal, unknown) for one application record (status answer or callback ``data``). Pure."""
    status = data.get("status")
    if not isinstance(status, str) or not status:
        raise ParseError("missing field data.status")
    key = status.strip().lower()
    outcome = data.get("outcome")
    outcome_text = outcome.strip() if isinstance(outcome, str) else None
    raw = key if key != "completed" else f"completed:{outcome_text or ''}"
    if key == "completed":
        if not outcome_text:
            # Finished without a decision we can read: not a rejection by default. Kept, moves nothing and is
            # flagged like an undocumented status (alerted once) so that someone looks at it.
            return raw, Signal(None, source, provider_status=raw), True
        approved = outcome_text.lower() in APPROVED_OUTCOMES
        trigger = Trigger.PROVIDER_APPROVED if approved else Trigger.PROVIDER_REJECTED
        return raw, Signal(trigger, source, provider_status=raw, comment=None if approved else outcome_text), False
    known = key in STATUS_TRIGGERS
    return raw, Signal(STATUS_TRIGGERS.get(key), source, provider_status=raw), not known


def dedupe_key(data: Mapping[str, Any]) -> str:
    content = [NAME, data.get("applicationId"), data.get("status"), data.get("outcome")]
    return hashlib.sha256(json.dumps(content, default=str).encode()).hexdigest()


def scrub(payload: Mapping[str, Any]) -> dict[str, Any]:
    data = payload.get("data")
    kept: dict[str, Any] = {"code": payload.get("code"), "requestId": payload.get("requestId")}
    if isinstance(data, Mapping):
        kept["data"] = {key: data[key] for key in KEPT_FIELDS if key in data}
    return kept


def parse(payload: Any) -> ParsedEvent:
    """Parse a decoded callback body. The tracked id of a connectFi customer is its ``customerId``."""
    if not isinstance(payload, dict):
        raise ParseError("the body must be a JSON object")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise ParseError("missing field data")
    customer_id = data.get("customerId")
    if customer_id in (None, "") or not isinstance(customer_id, str | int):
        raise ParseError("missing field data.customerId")
    if data.get("applicationId") in (None, ""):
        raise ParseError("missing field data.applicationId")
    raw, signal, unknown = map_application(data, Source.WEBHOOK)
    return ParsedEvent(NAME, "akepa.callback", None, dedupe_key(data), str(customer_id), None, signal,
                       ignore_reason=f"unknown connectFi status {raw!r} kept as is" if unknown else None,
                       unknown_status=unknown, application_id=str(data["applicationId"]))


class ConnectFiAdapter:
    name = NAME

    def __init__(self, client: httpx.AsyncClient, clock: Clock, base_url: str, login: str, password: str) -> None:
        self.client = client
        self.clock = clock
        self.base_url = base_url.rstrip("/")
        self._user = {"user": {"login": login, "password": password}}
        self.tokens = TokenCache(clock, self._fetch_token)

    async def _fetch_token(self) -> tuple[str, datetime]:
        try:
            response = await self.client.post(f"{self.base_url}/auth/get-token", json=self._user)
        except httpx.HTTPError as exc:
            raise transport_error(NAME, exc) from None
        body = json_body(NAME, response)
        if response.status_code != 200 or not isinstance(body, dict) or str(body.get("code")) != "0":
            raise status_error(NAME, response, _message(body, "token refused"), self.clock.now(), _code(body))
        data = body.get("data") if isinstance(body.get("data"), dict) else {}
        assert isinstance(data, dict)
        token = data.get("token") or data.get("baseToken")
        if not isinstance(token, str) or not token:
            raise ProviderError(NAME, "unexpected", "the token answer has no data.token")
        expires = _parse_time(data.get("dtsExpireAt")) or self.clock.now() + timedelta(minutes=10)
        return token, expires

    async def _post(self, path: str, payload: Mapping[str, Any]) -> Any:
        for attempt in (1, 2):
            token = await self.tokens.get()
            try:
                response = await self.client.post(f"{self.base_url}{path}", json=payload,
                                                  headers={TOKEN_HEADER: token})
            except httpx.HTTPError as exc:
                raise transport_error(NAME, exc) from None
            body = json_body(NAME, response)
            if response.status_code == 401 and attempt == 1:
                self.tokens.invalidate(token)
                continue
            if response.status_code != 200 or not isinstance(body, dict) or str(body.get("code")) != "0":
                error = status_error(NAME, response, _message(body, "request refused"), self.clock.now(),
                                     _code(body))
                code = _code(body)
                if response.status_code == 200 and code is not None:  # an error envelope with a 200
                    error.kind = "not_found" if code.endswith("NotFound") else "invalid"
                raise error
            return body
        raise AssertionError("unreachable")

    async def fetch_status(self, customer: CustomerRef) -> StatusReport:
        if not customer.application_id:
            raise ProviderError(NAME, "invalid", "the customer has no application_id; register it with one")
        body = await self._post("/akepa/status", {"customerId": customer.provider_customer_id,
                                                  "applicationId": customer.application_id})
        data = body.get("data")
        if not isinstance(data, dict):
            raise ProviderError(NAME, "unexpected", "the status answer has no data object")
        try:
            raw, signal, unknown = map_application(data, Source.POLL)
        except ParseError as exc:
            raise ProviderError(NAME, "unexpected", str(exc)) from None
        return StatusReport(customer.provider_customer_id, raw, signal, unknown=unknown,
                            detail={"application_id": data.get("applicationId")})


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _code(body: Any) -> str | None:
    return str(body["code"]) if isinstance(body, dict) and body.get("code") is not None else None


def _message(body: Any, default: str) -> str:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        code = body.get("code")
        return f"{code}: {body['message']}" if code else str(body["message"])
    return default
