"""The hottest request, ``GET /v1/customers/{id}``, answered without Starlette's per-request machinery.

Dashboards poll single customers, mostly with ``If-None-Match``. Routing a request through Starlette (the
exception middleware, the router's regex match of each route, ``Request`` and ``Response`` objects, the
``send`` wrappers) costs about as much as the read itself, so this ASGI middleware, which sits in front of
the router, answers the common case directly: a GET of ``/v1/customers/<digits>`` with a bearer key that
``ApiKeys`` verified recently (its cache; no database access) and a customer that exists. Both paths read
through ``tracker.web.api.read_customer``, so the answer is the same, byte for byte and header for header
(the tests compare them).

Anything else goes to the application untouched: another route, no key or a key not in the cache (the full
path authenticates it and fills the cache), too small a scope, an unknown customer, a database error. For
the last three the full path runs the request again from the start and answers it the usual way (403, 404,
503); nothing has been sent at that point, so this costs only time, and only on errors.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from tracker.web.api import read_customer
from tracker.web.requests import bearer_token

PREFIX = "/v1/customers/"
_JSON = (b"content-type", b"application/json")


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
        return 200, [(b"etag", etag.encode()), (b"content-length", str(len(body)).encode()), _JSON], body
