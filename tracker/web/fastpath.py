"""The hottest request, ``GET /v1/customers/{id}``, answered without Starlette's per-request machinery.

Dashboards poll single customers, mostly with ``If-None-Match``. Routing a request through Starlette (the
exception middleware, the router's regex match of each route, ``Request`` and ``Response`` objects, the
``send`` wrappers) costs about as much as the read itself, so this ASGI middleware, which sits in front of
the router, answers the common case directly: a GET of ``/v1/customers/<digits>`` with a bearer key that
``ApiKeys`` verified recently (its cache; no database access) and a customer that exists. The answer is the
same, byte for byte and header for header, as ``tracker.web.api.get_customer`` gives (the tests compare
them).

Anything else goes to the application untouched: another route, no key or a key not in the cache (the full
path authenticates it and fills the cache), too small a scope, an unknown customer, a database error. For
the last three the full path runs the request again from the start and answers it the usual way (403, 404,
503); nothing has been sent at that point, so this costs only time, and only on errors.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from tracker.web.responses import customer_etag, customer_json, etag_matches, fast_dumps

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
        authorization = if_none_match = None
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value
            elif name == b"if-none-match" and if_none_match is None:
                if_none_match = value
        if authorization is None or authorization[:7].lower() != b"bearer ":
            return None
        container = self.container
        principal = container.api_keys.from_cache(authorization[7:].strip().decode("latin-1"))
        if principal is None or not principal.allows("read"):
            return None
        customers = container.customers
        try:
            if if_none_match:
                key = await customers.reads.key(customer_id)
                if key is None:
                    return None
                etag = customer_etag(key)
                if etag_matches(if_none_match.decode("latin-1"), etag):
                    return 304, [(b"etag", etag.encode())], b""
            row = await customers.reads.get(customer_id)
        except Exception:  # the full path reads again and answers the error as it should (503)
            return None
        if row is None:
            return None
        etag = customer_etag(row)
        if if_none_match and etag_matches(if_none_match.decode("latin-1"), etag):
            return 304, [(b"etag", etag.encode())], b""
        body = fast_dumps(customer_json(row, container.clock.now()))
        return 200, [(b"etag", etag.encode()), (b"content-length", str(len(body)).encode()), _JSON], body
