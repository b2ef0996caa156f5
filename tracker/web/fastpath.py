"""The hottest requests, answered without Starlette's per-request machinery: provider webhooks
(``WebhookFastPath``, at the end) and ``GET /v1/customers/{id}`` (``CustomerReadFastPath``).

Dashboards poll single customers, mostly with ``If-None-Match``. Routing a request through Starlette (the
exception middleware, the router's regex match of each route, ``Request`` and ``Response`` objects, the
``send`` wrappers) costs about as much as the read itself, so this ASGI middleware, which sits in front of
all of Starlette (``tracker.web.app._App``), answers the common case directly: a GET of
``/v1/customers/<digits>`` with a bearer key that ``ApiKeys`` verified recently (its cache; no database
access) and a customer that exists. Both paths read through ``tracker.web.api.read_customer``, so the answer
is the same, byte for byte and header for header (the tests compare them).

Anything else goes to the application untouched: another route, no key or a key not in the cache (the full
path authenticates it and fills the cache), too small a scope, an unknown customer, a database error. For
the last three the full path runs the request again from the start and answers it the usual way (403, 404,
503); nothing has been sent at that point, so this costs only time, and only on errors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from tracker.settings import MAX_WEBHOOK_BODY
from tracker.web import webhooks
from tracker.web.api import read_customer
from tracker.web.requests import bearer_token, is_json
from tracker.web.responses import JSON_CONTENT_TYPE, UNEXPECTED
from tracker.web.webhooks import Receiver

log = logging.getLogger("tracker.web")

PREFIX = "/v1/customers/"


class CustomerReadFastPath:
    def __init__(self, app: ASGIApp, container: Any) -> None:
        self.app = app
        self.container = container

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            ident = path[len(PREFIX):]
            if path.startswith(PREFIX) and ident.isascii() and ident.isdigit():
                answer = await self._answer(scope, int(ident))
                if answer is not None:
                    status, headers, body = answer
                    await send({"type": "http.response.start", "status": status, "headers": headers})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, customer_id: int) -> tuple[int, list[tuple[bytes, bytes]], bytes] | None:
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in (b"authorization", b"if-none-match"):
                headers.setdefault(name, value)  # the first of each, as Starlette's Headers.get
        token = bearer_token(headers.get(b"authorization", b"").decode("latin-1"))
        principal = self.container.api_keys.from_cache(token) if token is not None else None
        if principal is None or not principal.allows("read"):
            return None
        if_none_match = headers.get(b"if-none-match")
        try:
            etag, body = await read_customer(self.container, customer_id,
                                             if_none_match.decode("latin-1") if if_none_match is not None else None)
        except Exception:  # NotFound, a database error: the full path reads again and answers it (404, 503)
            return None
        if body is None:
            return 304, [(b"etag", etag.encode())], b""
        return 200, [(b"etag", etag.encode()), (b"content-length", str(len(body)).encode()), JSON_CONTENT_TYPE], body


class WebhookFastPath:
    """A provider webhook (``POST /webhooks/blaaiz`` or ``/webhooks/cryptopocket``) that declares a JSON body
    of at most ``limit`` bytes, answered without Starlette's routing, ``Request`` and ``Response`` objects.

    What it answers it answers through ``tracker.web.webhooks.receive``, as the route does: the same checks,
    the same stored event, the same reply (401, 400, 503 and 200 alike). What it does not take goes to the
    application untouched, before any of the body is read: another route or method, no Content-Length (a
    chunked body), a declared length over the limit (413), a body that is not JSON (415). connectFi's route
    carries its token in the path and always takes the full path; it is polled far more than it calls us."""

    PATHS = {"/webhooks/blaaiz": "blaaiz", "/webhooks/cryptopocket": "cryptopocket"}

    def __init__(self, app: ASGIApp, container: Any, receivers: Mapping[str, Receiver],
                 limit: int = MAX_WEBHOOK_BODY) -> None:
        self.app = app
        self.container = container
        self.receivers = receivers  # the application's (app.state.receivers), read per request
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            provider = self.PATHS.get(scope["path"])
            if provider is not None:
                receiver = self.receivers[provider]
                headers = Headers(scope=scope)
                length = headers.get("content-length", "")
                if (length.isascii() and length.isdigit() and int(length) <= self.limit
                        and "transfer-encoding" not in headers and is_json(headers.get("content-type", ""))):
                    body = await self._body(receive)
                    if body is None:  # the sender went away: nobody to answer
                        return
                    try:
                        reply = await webhooks.receive(self.container, receiver, headers, {}, body)
                    except Exception:  # what the application's error handler would answer; nothing has been sent
                        log.exception("unexpected error on POST %s", scope["path"])
                        reply = UNEXPECTED
                    await send({"type": "http.response.start", "status": reply.status,
                                "headers": reply.raw_headers()})
                    await send({"type": "http.response.body", "body": reply.body})
                    return
        await self.app(scope, receive, send)

    @staticmethod
    async def _body(receive: Receive) -> bytes | None:
        # The server holds the body to its declared length, so no more than ``limit`` bytes arrive.
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)
