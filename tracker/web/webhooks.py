"""Provider webhooks. The raw event is stored (and applied) before the 2xx; see ``tracker.ingest``.

Every provider goes through the same steps: 415 unless JSON, 413 over 1 MiB (before reading it whole), 401
unless authenticated (signature, or connectFi's path token), then parse: a body that cannot be understood is
stored as ``rejected`` and answered 400; anything else is stored, applied and answered 200. 503 when the
database cannot take the write, so the provider retries.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tracker.domain.events import ParsedEvent, ParseError
from tracker.errors import DatabaseUnavailable, TrackerError
from tracker.ingest import Delivery
from tracker.providers import blaaiz, connectfi, cryptopocket
from tracker.web.requests import is_json, read_body
from tracker.web.responses import dumps, error

_EMAIL_IN_RAW = re.compile(rb'"customer_email"\s*:\s*"(?:[^"\\]|\\.)*"')
RETRY_AFTER_SECONDS = "30"

Verify = Callable[[Request, bytes, datetime], None]  # raises ValueError (a signature error) with the reason


async def blaaiz_webhook(request: Request) -> Response:
    settings = request.app.state.container.settings

    def verify(request: Request, body: bytes, now: datetime) -> None:
        blaaiz.verify(request.headers, body, settings.blaaiz_webhook_secrets, now, settings.blaaiz_webhook_tolerance)

    return await _receive(request, blaaiz.NAME, verify, blaaiz.parse, blaaiz.scrub, (blaaiz.TIMESTAMP_HEADER,))


async def connectfi_webhook(request: Request) -> Response:
    expected = request.app.state.container.settings.connectfi_webhook_token

    def verify(request: Request, body: bytes, now: datetime) -> None:
        # connectFi does not sign its callbacks: the URL we hand it carries our own secret token.
        if not expected:
            raise ValueError("no connectFi webhook token is configured (TRACKER_CONNECTFI_WEBHOOK_TOKEN)")
        if not hmac.compare_digest(str(request.path_params["token"]).encode(), expected.encode()):
            raise ValueError("the token in the URL is not the configured connectFi webhook token")

    return await _receive(request, connectfi.NAME, verify, connectfi.parse, connectfi.scrub, ())


async def cryptopocket_webhook(request: Request) -> Response:
    settings = request.app.state.container.settings

    def verify(request: Request, body: bytes, now: datetime) -> None:
        cryptopocket.verify(request.headers, body, settings.cryptopocket_api_key, settings.cryptopocket_api_secret,
                            now)

    return await _receive(request, cryptopocket.NAME, verify, cryptopocket.parse, cryptopocket.scrub,
                          (cryptopocket.TIMESTAMP_HEADER,))


async def _receive(request: Request, provider: str, verify: Verify, parse: Callable[[Any], ParsedEvent],
                   scrub: Callable[[Mapping[str, Any]], dict[str, Any]], kept_headers: tuple[str, ...]) -> Response:
    container = request.app.state.container
    try:
        if not is_json(request):
            return error(415, "unsupported_media_type", "send the event as JSON (Content-Type: application/json)")
        body = await read_body(request)
    except TrackerError as exc:
        return error(exc.status, exc.code, exc.message)
    now = container.clock.now()
    try:
        verify(request, body, now)
    except ValueError as exc:
        container.metrics.observe_webhook(provider, "unauthorized")
        return error(401, "invalid_signature", str(exc))
    request_headers = request.headers
    headers = {}
    for name in (*kept_headers, "user-agent"):
        value = request_headers.get(name)
        if value is not None:
            headers[name] = value
    parsed: ParsedEvent | None = None
    problem: str | None = None
    stored: bytes | None = None
    try:
        payload: Any = json.loads(body)
    except ValueError as exc:
        problem = f"the body is not valid JSON: {exc}"
    else:
        if isinstance(payload, dict):
            stored = dumps(scrub(payload))
        try:
            parsed = parse(payload)
        except ParseError as exc:
            problem = str(exc)
    if stored is None:  # not a JSON object: keep the raw body, without an e-mail address it may carry
        stored = _EMAIL_IN_RAW.sub(b'"customer_email":null', body)
    delivery = Delivery(provider, now, stored, headers, parsed, problem)
    try:
        result = await container.committer.submit(delivery)
    except DatabaseUnavailable as exc:
        return error(503, exc.code, exc.message, {"Retry-After": RETRY_AFTER_SECONDS})
    if result.outcome == "rejected":
        return error(400, "invalid_event", f"{result.reason} (stored as event {result.event_id})")
    # What json_response({"status": ..., "event": ...}) writes, without the generic encoder on the hot path.
    return Response(f'{{"status":"{result.status}","event":{result.event_id}}}'.encode(),
                    media_type="application/json")
