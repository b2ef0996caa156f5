"""The Starlette application: the route table, error handling, and the OpenAPI document built from it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tracker.errors import TrackerError
from tracker.logs import redact_path
from tracker.web import alerts_api, api, dashboard, events_api, explain_api, openapi, ops, stream, webhooks
from tracker.web.responses import UNEXPECTED, error, json_response

log = logging.getLogger("tracker.web")
# A request handler, or a plain ASGI app mounted at its route (the hottest read, ``api.CustomerEndpoint``).
Endpoint = Callable[[Request], Awaitable[Response]] | ASGIApp

# (path, method, endpoint, summary, OpenAPI extras key)
ROUTES: list[tuple[str, str, Endpoint, str, str | None]] = [
    ("/webhooks/blaaiz", "POST", webhooks.blaaiz_webhook, "Blaaiz customer webhook (signed)", "webhook"),
    ("/webhooks/connectfi/{token}", "POST", webhooks.connectfi_webhook,
     "connectFi akepa callback (unsigned; the path token authenticates it)", "webhook"),
    ("/webhooks/cryptopocket", "POST", webhooks.cryptopocket_webhook,
     "CryptoPocket KYC webhook (X-API-Key, X-Signature, X-Timestamp)", "webhook"),
    ("/v1/customers", "POST", api.register, "Register a customer (idempotent)", "register"),
    ("/v1/customers", "GET", api.list_customers, "List customers: newest change first, or the longest pending first",
     "list"),
    ("/v1/customers/{id:int}", "GET", api.get_customer, "One customer (ETag, 304)", "get"),
    ("/v1/customers/{id:int}/uploads", "POST", api.report_upload, "Report an upload", "upload"),
    ("/v1/customers/{id:int}/submit", "POST", api.submit,
     "The customer was submitted for review (any provider): the clock starts", "submit"),
    ("/v1/customers/{id:int}/poll", "POST", api.poll,
     "Poll the provider now (admin); answers the customer and what the poll found", "poll"),
    ("/v1/customers/{id:int}/state", "POST", api.set_state,
     "Set the state by hand (admin; kept in the history with who and why)", "set_state"),
    ("/v1/customers/{id:int}/explain", "GET", explain_api.explain_customer,
     "Why the customer is in its state: its moves and the rules they applied, the events that moved nothing and "
     "why, its tier and polls", "read"),
    ("/v1/customers/{id:int}/history", "GET", api.customer_history, "Transitions and the events behind them",
     "read"),
    ("/v1/alerts", "GET", alerts_api.list_alerts, "Alerts, newest first, filtered and paged like the other lists",
     "read"),
    ("/v1/alerts/{id:int}/acknowledge", "POST", alerts_api.acknowledge_alert,
     "Acknowledge an alert (stops critical repeats)", "admin"),
    ("/v1/summary", "GET", api.summary, "Counts by provider, state and tier; oldest pending age", "read"),
    ("/v1/stream", "GET", stream.stream,
     "Server-Sent Events of transitions and alert changes (resumable with Last-Event-ID)", "stream"),
    ("/v1/events", "GET", events_api.list_events,
     "Stored inbound events with their outcome and reason, newest first (no bodies)", "events"),
    ("/v1/events/{id:int}/replay", "POST", api.replay_event, "Run a stored event through the current code",
     "admin"),
    ("/healthz", "GET", ops.healthz, "Liveness", None),
    ("/readyz", "GET", ops.readyz, "Readiness: database reachable, migrations at head", None),
    ("/metrics", "GET", ops.metrics, "Prometheus metrics", None),
]


def _openapi_document() -> dict[str, Any]:
    extras = openapi.customer_ops()
    table = [(path.replace(":int", ""), method, summary, dict(extras.get(key, {})) if key else {})
             for path, method, _, summary, key in ROUTES]
    table.append(("/openapi.json", "GET", "This document", {}))
    return openapi.document(table)


async def _openapi(request: Request) -> Response:
    return json_response(request.app.state.openapi)


async def _tracker_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TrackerError)
    headers = {"Retry-After": "30"} if exc.status == 503 else None
    return error(exc.status, exc.code, exc.message, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error(404, "not_found", f"no route for {request.method} {request.url.path}; see /openapi.json")
    if exc.status_code == 405:
        # Every method of every route at this path (GET and POST /v1/customers are two routes).
        allowed = sorted({method for route in request.app.routes if isinstance(route, Route)
                          and route.matches(request.scope)[0] is not Match.NONE for method in route.methods or ()})
        return error(405, "method_not_allowed",
                     f"{request.method} is not allowed on {request.url.path}; use {', '.join(allowed)}",
                     {"Allow": ", ".join(allowed)})
    return error(exc.status_code, "http_error", str(exc.detail))


async def _database_error(request: Request, exc: Exception) -> Response:
    log.warning("database error on %s %s: %s", request.method, redact_path(request.url.path), type(exc).__name__)
    return error(503, "database_unavailable", "the database is unavailable; retry later", {"Retry-After": "30"})


class _Unexpected:
    """Answers 500 to an exception no handler took, and logs it with its traceback once. Nothing re-raises it
    (as Starlette's own catch-all does), so the server does not log a second traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            log.exception("unexpected error on %s %s", scope["method"], redact_path(scope["path"]))
            if not started:  # else the answer is cut short: the client sees the connection end
                await UNEXPECTED.response()(scope, receive, send)


def create_app(container: Any, *, worker: bool = False) -> Starlette:
    """The app. ``worker``: also run the scheduler (polling, escalation, delivery) in this process, as
    ``tracker serve`` does; the inbox's writer and applier run in every process."""
    routes = [Route(path, endpoint, methods=[method]) for path, method, endpoint, _, _ in ROUTES]
    routes.append(Route("/openapi.json", _openapi, methods=["GET"]))
    routes += dashboard.ROUTES  # the HTML dashboard at / (not in the OpenAPI document)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        container.start()
        if worker:
            await container.start_worker()
        try:
            yield
        finally:
            await container.changes.stop()
            if worker:
                await container.stop_worker()
            container.stop()

    receivers = webhooks.receivers(container.settings)
    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(_Unexpected)], exception_handlers={
        TrackerError: _tracker_error, HTTPException: _http_error, DBAPIError: _database_error,
    })
    app.state.container = container
    app.state.receivers = receivers
    app.state.openapi = _openapi_document()
    return app
