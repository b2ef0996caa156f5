"""The JSON API under /v1 (DESIGN.md section 5)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tracker.domain.lifecycle import PROVIDERS, State
from tracker.durations import parse_duration
from tracker.errors import NotFound, TrackerError
from tracker.web.requests import (
    MAX_PAGE,
    authorize,
    authorize_header,
    checked_id,
    known_params,
    path_id,
    query_choice,
    query_int,
    read_json,
)
from tracker.web.responses import (
    customer_etag,
    customer_json,
    decode_cursor,
    encode_cursor,
    etag_matches,
    fast_dumps,
    iso,
    json_response,
    list_etag,
    not_modified,
    plain_json_response,
)

TIERS = ("none", "overdue", "critical")
LIST_PARAMS = frozenset({"provider", "state", "tier", "reference", "provider_customer_id", "pending_longer_than",
                         "limit", "cursor", "sort", "customer_type", "changed_since"})
CUSTOMER_TYPES = ("individual", "business", "unknown")
SORTS = ("updated", "pending_since")  # newest change first; oldest pending first (pending customers only)


def _customers(request: Request) -> Any:
    return request.app.state.container.customers


def _now(request: Request) -> Any:
    return request.app.state.container.clock.now()


def _customer_answer(request: Request, row: Any, status: int = 200, warnings: list[str] | None = None
                     ) -> Response:
    body = customer_json(row._mapping, _now(request))
    if warnings:
        body["warnings"] = warnings
    return json_response(body, status, {"ETag": customer_etag(row._mapping)})


async def register(request: Request) -> Response:
    await authorize(request, "write")
    body = await read_json(request)
    result = await run_in_threadpool(_customers(request).register, body)
    return _customer_answer(request, result.row, 201 if result.created else 200)


async def report_upload(request: Request) -> Response:
    await authorize(request, "write")
    body = await read_json(request)
    result = await run_in_threadpool(_customers(request).report_upload, path_id(request), body)
    return _customer_answer(request, result.row, warnings=result.warnings)


async def set_state(request: Request) -> Response:
    principal = await authorize(request, "admin")
    body = await read_json(request)
    unknown = sorted(set(body) - {"state", "reason"})
    if unknown:
        raise TrackerError(f"unknown field {unknown[0]!r}; send state and reason")
    result = await run_in_threadpool(_customers(request).set_state, path_id(request), body.get("state"),
                                     body.get("reason"), principal.name)
    return _customer_answer(request, result.row, warnings=result.warnings)


async def poll(request: Request) -> Response:
    """Poll the customer's provider now (admin): the customer afterwards and what the poll found."""
    principal = await authorize(request, "admin")
    container = request.app.state.container
    customer_id = path_id(request)
    found = await container.poller.poll_now(customer_id, f"operator:{principal.name}")
    row = await container.customers.fetch(customer_id)
    return json_response({"customer": customer_json(row, _now(request)),
                          "poll": {"outcome": found.outcome, "provider_status": found.provider_status,
                                   "error": found.error}}, headers={"ETag": customer_etag(row)})


async def submit(request: Request) -> Response:
    await authorize(request, "write")
    result = await run_in_threadpool(_customers(request).submit, path_id(request))
    return _customer_answer(request, result.row, warnings=result.warnings)


async def read_customer(container: Any, customer_id: int, if_none_match: str | None) -> tuple[str, bytes | None]:
    """One customer as ``GET /v1/customers/{id}`` answers it: its ETag, and its JSON body, or None when
    ``If-None-Match`` names the ETag (304). Raises ``NotFound``.

    No worker thread for these reads (see tracker.db.reads). With If-None-Match, first read only what the ETag
    is made of: when it still matches, that is all a 304 needs."""
    customers = container.customers
    if if_none_match:
        etag = customer_etag(await customers.fetch_key(customer_id))
        if etag_matches(if_none_match, etag):
            return etag, None
    row = await customers.fetch(customer_id)
    etag = customer_etag(row)
    if if_none_match and etag_matches(if_none_match, etag):  # from the row as read now, whatever the key said
        return etag, None
    return etag, fast_dumps(customer_json(row, container.clock.now()))


class CustomerEndpoint:
    """``GET /v1/customers/{id}`` as a plain ASGI app mounted at its route: what dashboards poll, mostly with
    ``If-None-Match``, and Starlette's ``Request`` and ``Response`` objects cost about as much as the read.
    Errors are raised as everywhere else, for the application's handlers."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        container = scope["app"].state.container
        wanted: dict[bytes, str] = {}
        for name, value in scope["headers"]:
            if name in (b"authorization", b"if-none-match") and name not in wanted:  # the first, as Headers.get
                wanted[name] = value.decode("latin-1")
        await authorize_header(container.api_keys, wanted.get(b"authorization", ""), "read")
        etag, body = await read_customer(container, checked_id(scope["path_params"]["id"], "customer"),
                                         wanted.get(b"if-none-match"))
        headers = [(b"etag", etag.encode("latin-1"))]
        if body is None:
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers += [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


get_customer = CustomerEndpoint()


def _list_filters(request: Request) -> dict[str, Any]:
    params = request.query_params
    known_params(params, LIST_PARAMS)
    filters: dict[str, Any] = {
        "provider": query_choice(params, "provider", PROVIDERS),
        "state": query_choice(params, "state", [s.value for s in State]),
        "tier": query_choice(params, "tier", TIERS),
        "customer_type": query_choice(params, "customer_type", CUSTOMER_TYPES),
    }
    if "changed_since" in params:
        filters["changed_after"] = _instant("changed_since", params["changed_since"])
    for name in ("reference", "provider_customer_id"):
        if name in params:
            if "\x00" in params[name]:  # no stored id has one, and PostgreSQL refuses it in a query
                raise TrackerError(f"{name} contains a NUL character (\\u0000), which no customer's has")
            filters[name] = params[name]
    if "pending_longer_than" in params:
        try:
            filters["pending_before"] = _now(request) - parse_duration(params["pending_longer_than"])
        except ValueError as exc:
            raise TrackerError(f"pending_longer_than: {exc}") from None
    filters["limit"] = query_int(params, "limit", 50, 1, MAX_PAGE)
    sort = filters["sort"] = query_choice(params, "sort", SORTS, "updated")
    if "cursor" in params:
        try:
            at, last, cursor_sort = decode_cursor(params["cursor"])
        except (ValueError, UnicodeDecodeError):
            raise TrackerError("cursor is not one this service gave out; start again without it") from None
        if cursor_sort != sort:
            raise TrackerError(f"this cursor continues a list with sort={cursor_sort}; send the same sort")
        filters["after"] = (at, last)
    return filters


def _instant(name: str, text: str) -> datetime:
    """An ISO 8601 time with its zone (``Z`` or an offset); 400 naming ``name`` for anything else."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "+"))
        if value.tzinfo is None:
            raise ValueError("no zone")
        return value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise TrackerError(f"{name} must be an ISO 8601 time with its zone, like 2026-01-05T09:30:00Z") from None


async def list_customers(request: Request) -> Response:
    await authorize(request, "read")
    filters = _list_filters(request)
    limit = filters["limit"]
    rows = await run_in_threadpool(_customers(request).page, **{**filters, "limit": limit + 1})
    page, more = rows[:limit], len(rows) > limit
    sort = filters["sort"]
    next_cursor = (encode_cursor(page[-1]["pending_since" if sort == "pending_since" else "updated_at"],
                                 page[-1]["id"], sort) if more else None)
    etag = list_etag(page, str(request.url.query))
    if not_modified(request, etag):
        return Response(status_code=304, headers={"ETag": etag})
    now = _now(request)
    return plain_json_response({"items": [customer_json(row, now) for row in page], "next_cursor": next_cursor},
                               headers={"ETag": etag})


async def customer_history(request: Request) -> Response:
    await authorize(request, "read")
    row, transitions, events, uploads = await run_in_threadpool(_customers(request).history, path_id(request))
    return json_response({
        "customer": customer_json(row._mapping, _now(request)),
        "transitions": [{
            "id": t.id, "from": t.from_state, "to": t.to_state, "trigger": t.trigger, "source": t.source,
            "event": t.event_id, "provider_status": t.provider_status, "provider_time": iso(t.provider_time),
            "recorded_at": iso(t.recorded_at), "actor": t.actor, "comment": t.comment, "version": t.version,
        } for t in transitions],
        "events": [{
            "id": e.id, "provider": e.provider, "event_id": e.event_id, "event_type": e.event_type,
            "provider_status": e.provider_status, "provider_time": iso(e.provider_time),
            "received_at": iso(e.received_at), "processed_at": iso(e.processed_at), "outcome": e.outcome,
            "reason": e.reason, "duplicate_of": e.duplicate_of,
        } for e in events],
        "uploads": [{
            "slot": u.slot, "file_id": u.file_id, "document_type": u.document_type, "flag": u.flag,
            "reported_at": iso(u.reported_at),
        } for u in uploads],
    })


async def replay_event(request: Request) -> Response:
    await authorize(request, "admin")
    applier = request.app.state.container.applier
    try:
        result = await run_in_threadpool(applier.replay, path_id(request))
    except LookupError:
        raise NotFound(f"no stored event with id {path_id(request)}") from None
    return json_response({"event": result.event_id, "outcome": result.outcome, "reason": result.reason,
                          "customer_id": result.customer_id})


async def summary(request: Request) -> Response:
    await authorize(request, "read")
    container = request.app.state.container
    counts, oldest = await run_in_threadpool(container.summary)
    health = await run_in_threadpool(container.provider_health)
    now = _now(request)
    providers: dict[str, Any] = {p: {"states": {}, "tiers": {}, "oldest_pending_seconds": None,
                                     "oldest_pending_customer": None} for p in PROVIDERS}
    for provider, state, tier, n in counts:
        entry = providers[provider]
        entry["states"][state] = entry["states"].get(state, 0) + n
        if state == State.PENDING.value:
            entry["tiers"][tier] = entry["tiers"].get(tier, 0) + n
    for row in oldest:
        if row.pending_since is not None:
            providers[row.provider]["oldest_pending_seconds"] = int((now - row.pending_since).total_seconds())
            providers[row.provider]["oldest_pending_customer"] = {
                "id": row.id, "provider_customer_id": row.provider_customer_id,
                "pending_since": iso(row.pending_since)}
    for provider, info in health.items():
        providers[provider]["health"] = info
    return json_response({"providers": providers, "generated_at": iso(now)})


