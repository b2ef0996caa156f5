"""Provider webhooks. The event is stored before the 2xx and applied afterwards; see ``tracker.inbox``.

Every provider goes through the same steps: 415 unless JSON, 413 over 1 MiB (before reading it whole), 401
unless authenticated (signature, or connectFi's path token), then parse: a body that cannot be understood is
stored as ``rejected`` and answered 400; anything else is stored and answered 200 (``accepted``, ``duplicate``
or ``ignored``); the applier applies it afterwards. 503 when the database cannot take the write, so the
provider retries. Nothing here reads or writes customers.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from tracker.domain.events import ParsedEvent, ParseError
from tracker.errors import DatabaseUnavailable, TrackerError
from tracker.inbox.store import Delivery
from tracker.providers import blaaiz, connectfi, cryptopocket
from tracker.settings import Settings
from tracker.web.requests import decode_json, is_json, read_body
from tracker.web.responses import Reply, dumps, error_reply

log = logging.getLogger("tracker.webhooks")
_EMAIL_IN_RAW = re.compile(rb'"customer_email"\s*:\s*"(?:[^"\\]|\\.)*"')
RETRY_AFTER_SECONDS = "30"

# raises ValueError (a signature error) with the reason: (headers, path parameters, body, now)
Verify = Callable[[Mapping[str, str], Mapping[str, Any], bytes, datetime], None]


@dataclass(frozen=True)
class Receiver:
    """How one provider's deliveries are authenticated, parsed and stored."""

    provider: str
    verify: Verify
    parse: Callable[[Any], ParsedEvent]
    scrub: Callable[[Mapping[str, Any]], dict[str, Any]]
    kept_headers: tuple[str, ...]  # stored with the event, besides user-agent


def receivers(settings: Settings) -> dict[str, Receiver]:
    def blaaiz_verify(headers: Mapping[str, str], params: Mapping[str, Any], body: bytes, now: datetime) -> None:
        blaaiz.verify(headers, body, settings.blaaiz_webhook_secrets, now, settings.blaaiz_webhook_tolerance)

    def connectfi_verify(headers: Mapping[str, str], params: Mapping[str, Any], body: bytes, now: datetime) -> None:
        # connectFi does not sign its callbacks: the URL we hand it carries our own secret token.
        expected = settings.connectfi_webhook_token
        if not expected:
            raise ValueError("no connectFi webhook token is configured (TRACKER_CONNECTFI_WEBHOOK_TOKEN)")
        if not hmac.compare_digest(str(params.get("token", "")).encode(), expected.encode()):
            raise ValueError("the token in the URL is not the configured connectFi webhook token")

    def cryptopocket_verify(headers: Mapping[str, str], params: Mapping[str, Any], body: bytes, now: datetime
                            ) -> None:
        cryptopocket.verify(headers, body, settings.cryptopocket_api_key, settings.cryptopocket_api_secret, now)

    return {
        blaaiz.NAME: Receiver(blaaiz.NAME, blaaiz_verify, blaaiz.parse, blaaiz.scrub, (blaaiz.TIMESTAMP_HEADER,)),
        connectfi.NAME: Receiver(connectfi.NAME, connectfi_verify, connectfi.parse, connectfi.scrub, ()),
        cryptopocket.NAME: Receiver(cryptopocket.NAME, cryptopocket_verify, cryptopocket.parse, cryptopocket.scrub,
                                    (cryptopocket.TIMESTAMP_HEADER,)),
    }


def refused(provider: str, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
            ) -> Reply:
    """The answer to a delivery that is not taken, and its log line: the provider, the status and why; never the
    body, the signature or a secret."""
    log.info("webhook refused: provider=%s status=%s code=%s reason=%s", provider, status, code, message)
    return error_reply(status, code, message, headers)


def _encode(payload: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(payload)
    except TypeError:  # an integer orjson cannot write; the standard library can
        return dumps(payload)


async def receive(container: Any, receiver: Receiver, headers: Mapping[str, str], params: Mapping[str, Any],
                  body: bytes) -> Reply:
    """Authenticate, parse and store one delivery whose body has been read; the answer to send."""
    provider = receiver.provider
    now = container.clock.now()
    try:
        receiver.verify(headers, params, body, now)
    except ValueError as exc:
        container.metrics.observe_webhook(provider, "unauthorized")
        return refused(provider, 401, "invalid_signature", str(exc))
    kept = {}
    for name in (*receiver.kept_headers, "user-agent"):
        value = headers.get(name)
        if value is not None:
            kept[name] = value
    parsed: ParsedEvent | None = None
    problem: str | None = None
    stored: bytes | None = None
    try:
        payload: Any = decode_json(body)
    except ValueError as exc:
        problem = f"the body is not valid JSON: {exc}"
    else:
        try:
            if isinstance(payload, dict):
                stored = _encode(receiver.scrub(payload))
            parsed = receiver.parse(payload)
        except ParseError as exc:
            problem = str(exc)
        except RecursionError:  # decodable, but too deep to write back or to fingerprint: no provider sends it
            stored, parsed, problem = None, None, "the body is nested too deeply"
    if stored is None:  # not a JSON object: keep the raw body, without an e-mail address it may carry
        stored = _EMAIL_IN_RAW.sub(b'"customer_email":null', body)
    delivery = Delivery(provider, now, stored, kept, parsed, problem)
    try:
        result = await container.inbox.submit(delivery)
    except DatabaseUnavailable as exc:
        return refused(provider, 503, exc.code, exc.message, {"Retry-After": RETRY_AFTER_SECONDS})
    if result.status == "rejected":
        return refused(provider, 400, "invalid_event", f"{result.reason} (stored as event {result.event_id})")
    # What json_response({"status": ..., "event": ...}) writes, without the generic encoder on the hot path.
    return Reply(200, f'{{"status":"{result.status}","event":{result.event_id}}}'.encode())


async def blaaiz_webhook(request: Request) -> Response:
    return await _endpoint(request, blaaiz.NAME)


async def connectfi_webhook(request: Request) -> Response:
    return await _endpoint(request, connectfi.NAME)


async def cryptopocket_webhook(request: Request) -> Response:
    return await _endpoint(request, cryptopocket.NAME)


async def _endpoint(request: Request, provider: str) -> Response:
    container = request.app.state.container
    try:
        if not is_json(request.headers.get("content-type", "")):
            return refused(provider, 415, "unsupported_media_type",
                           "send the event as JSON (Content-Type: application/json)").response()
        body = await read_body(request)
    except TrackerError as exc:
        return refused(provider, exc.status, exc.code, exc.message).response()
    reply = await receive(container, request.app.state.receivers[provider], request.headers, request.path_params,
                          body)
    return reply.response()
