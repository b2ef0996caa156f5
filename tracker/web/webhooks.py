"""Provider webhooks. The raw event is stored (and applied) before the 2xx; see ``tracker.ingest``."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tracker.domain.events import ParsedEvent, ParseError
from tracker.errors import DatabaseUnavailable, TrackerError
from tracker.ingest import Delivery
from tracker.providers import blaaiz
from tracker.web.requests import is_json, read_body
from tracker.web.responses import dumps, error, json_response

_EMAIL_IN_RAW = re.compile(rb'"customer_email"\s*:\s*"(?:[^"\\]|\\.)*"')
RETRY_AFTER_SECONDS = "30"


async def blaaiz_webhook(request: Request) -> Response:
    container = request.app.state.container
    settings = container.settings
    try:
        if not is_json(request):
            return error(415, "unsupported_media_type", "send the event as JSON (Content-Type: application/json)")
        body = await read_body(request)
    except TrackerError as exc:
        return error(exc.status, exc.code, exc.message)
    now = container.clock.now()
    try:
        blaaiz.verify(request.headers, body, settings.blaaiz_webhook_secrets, now,
                      settings.blaaiz_webhook_tolerance)
    except blaaiz.SignatureError as exc:
        container.metrics.observe_webhook(blaaiz.NAME, "unauthorized")
        return error(401, "invalid_signature", str(exc))
    headers = {name: request.headers[name] for name in (blaaiz.TIMESTAMP_HEADER, "user-agent")
               if name in request.headers}
    parsed: ParsedEvent | None = None
    problem: str | None = None
    stored = _EMAIL_IN_RAW.sub(b'"customer_email":null', body)
    try:
        payload: Any = json.loads(body)
    except ValueError as exc:
        problem = f"the body is not valid JSON: {exc}"
    else:
        if isinstance(payload, dict):
            stored = dumps(blaaiz.scrub(payload))
        try:
            parsed = blaaiz.parse(payload)
        except ParseError as exc:
            problem = str(exc)
    delivery = Delivery(blaaiz.NAME, now, stored, headers, parsed, problem)
    return await _store(container, delivery)


async def _store(container: Any, delivery: Delivery) -> Response:
    try:
        result = await container.committer.submit(delivery)
    except DatabaseUnavailable as exc:
        return error(503, exc.code, exc.message, {"Retry-After": RETRY_AFTER_SECONDS})
    if result.outcome == "rejected":
        return error(400, "invalid_event", f"{result.reason} (stored as event {result.event_id})")
    return json_response({"status": result.status, "event": result.event_id})
