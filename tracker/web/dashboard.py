"""The HTML operations dashboard at ``/``: overview, stuck list, customer, alerts and inbound events pages,
server-rendered from the same application steps as the JSON API. ``ROUTES`` is what the app adds for it."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tracker import alerts
from tracker.apikeys import Principal
from tracker.domain.events import MAX_ID
from tracker.domain.explain import explain
from tracker.domain.lifecycle import PROVIDERS, State
from tracker.errors import TrackerError
from tracker.inbox import listing
from tracker.web import dashboard_actions, dashboard_auth
from tracker.web import dashboard_views as views
from tracker.web.dashboard_auth import page
from tracker.web.dashboard_render import render, static_file, with_query
from tracker.web.requests import before_id, id_cursor, path_id, query_int
from tracker.web.responses import decode_cursor, encode_cursor

PAGE = 100  # rows a list shows at once
FAILED_SHOWN = 50  # the newest failed deliveries the alerts page lists
HISTOGRAM_LIMIT = 5000  # the pending customers the overview reads (oldest first) for its ages
ALERT_STATES = ("open", "acknowledged", "resolved")


def _container(request: Request) -> Any:
    return request.app.state.container


def _choice(request: Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query_params.get(name) or None
    if value is not None and value not in allowed:
        raise TrackerError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


@page
async def overview(request: Request, principal: Principal) -> Response:
    container = _container(request)
    now = container.clock.now()
    counts = await run_in_threadpool(container.customer_counts)
    health = await run_in_threadpool(container.provider_health)
    pending = await run_in_threadpool(container.customers.page, sort="pending_since", limit=HISTOGRAM_LIMIT)
    return render(request, "overview.html", {
        "title": "Overview", "section": "overview", "live": "overview", "providers": PROVIDERS,
        "states": [s.value for s in State], "counts": views.counts_table(counts, PROVIDERS), "health": health,
        "oldest": views.oldest_by_provider(pending, PROVIDERS), "histogram": views.histogram(pending, now),
        "capped": len(pending) >= HISTOGRAM_LIMIT,
    }, principal=principal)


def _stuck_filters(request: Request) -> dict[str, Any]:
    params = request.query_params
    unknown = sorted(set(params) - {"provider", "customer_type", "tier", "q", "cursor", "notice", "count"})
    if unknown:
        raise TrackerError(f"unknown filter {unknown[0]!r}; this list takes provider, customer_type, tier and q")
    q = (params.get("q") or "").strip()
    if "\x00" in q or len(q) > 128:
        raise TrackerError("search for a provider customer id or a reference: at most 128 characters, no NUL")
    filters: dict[str, Any] = {"provider": _choice(request, "provider", PROVIDERS),
               "customer_type": _choice(request, "customer_type", views.CUSTOMER_TYPES),
               "tier": _choice(request, "tier", views.TIERS), "q": q or None, "after": None}
    if params.get("cursor"):
        try:
            at, last, sort = decode_cursor(params["cursor"])
        except (ValueError, UnicodeDecodeError):
            sort = ""
        if sort != "pending_since":
            raise TrackerError("this page link is not one the dashboard made; open the stuck list again")
        filters["after"] = (at, last)
    return filters


def _stuck_rows(customers: Any, filters: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """Pending customers, oldest first, as filtered: a page, and whether there are more. A search reads the
    customers whose provider customer id or reference is ``q``."""
    query = {"provider": filters["provider"], "tier": filters["tier"], "customer_type": filters["customer_type"],
             "sort": "pending_since"}
    if filters["q"] is not None:
        found = {row["id"]: row for name in ("provider_customer_id", "reference")
                 for row in customers.page(**query, **{name: filters["q"]}, limit=PAGE)}
        return sorted(found.values(), key=lambda row: (row["pending_since"], row["id"]))[:PAGE], False
    rows = customers.page(**query, after=filters["after"], limit=PAGE + 1)
    return rows[:PAGE], len(rows) > PAGE


@page
async def stuck(request: Request, principal: Principal) -> Response:
    container = _container(request)
    context: dict[str, Any] = {"title": "Stuck", "section": "stuck", "live": "stuck", "providers": PROVIDERS,
                               "customer_types": views.CUSTOMER_TYPES, "rows": [], "open_alerts": {},
                               "more": None, "filters": {}}
    try:
        filters = _stuck_filters(request)
    except TrackerError as exc:
        return render(request, "stuck.html", {**context, "error": exc.message, "live": ""}, principal=principal,
                      status=400)
    rows, more = await run_in_threadpool(_stuck_rows, container.customers, filters)
    kept = {k: v for k, v in filters.items() if k in ("provider", "customer_type", "tier", "q")}
    next_link = (with_query("/stuck", **kept, cursor=encode_cursor(rows[-1]["pending_since"], rows[-1]["id"],
                                                                   "pending_since")) if more else None)
    open_alerts = await run_in_threadpool(alerts.open_counts, container.engine, [row["id"] for row in rows])
    return render(request, "stuck.html", {**context, "rows": rows, "more": next_link, "filters": kept,
                                          "open_alerts": open_alerts}, principal=principal)


def _customer_page_data(container: Any, customer_id: int) -> dict[str, Any]:
    row, transitions, events, uploads = container.customers.history(customer_id)
    customer = row._mapping
    found = explain(customer, [t._mapping for t in transitions], [e._mapping for e in events],
                    container.clock.now())
    timeline = [{"at": t.recorded_at, "kind": "move", "row": t} for t in transitions]
    timeline += [{"at": e.received_at, "kind": "event", "row": e} for e in events]
    timeline.sort(key=lambda item: (item["at"], 0 if item["kind"] == "event" else 1), reverse=True)
    return {"customer": customer, "explain": found["text"], "timeline": timeline, "uploads": uploads,
            "alerts": [row for row, _ in alerts.page(container.engine, None, 100, None, customer_id=customer_id)]}


@page
async def customer(request: Request, principal: Principal) -> Response:
    container = _container(request)
    customer_id = path_id(request)
    data = await run_in_threadpool(_customer_page_data, container, customer_id)
    name = f"{views.provider_name(data['customer']['provider'])} {data['customer']['provider_customer_id']}"
    return render(request, "customer.html", {
        "title": f"Customer {customer_id} ({name})", "section": "stuck", "live": "customer",
        "customer_id": customer_id, "states": [s.value for s in State], **data,
    }, principal=principal)


@page
async def alerts_view(request: Request, principal: Principal) -> Response:
    container = _container(request)
    state = _choice(request, "state", ALERT_STATES)
    provider = _choice(request, "provider", PROVIDERS)
    before = before_id("a", request.query_params["cursor"]) if request.query_params.get("cursor") else None
    items = await run_in_threadpool(alerts.page, container.engine, state, PAGE + 1, before, provider=provider)
    shown = items[:PAGE]
    more = (with_query("/alerts", state=state, provider=provider, cursor=id_cursor("a", shown[-1][0].id))
            if len(items) > PAGE else None)
    failed = await run_in_threadpool(alerts.failed_deliveries, container.engine, FAILED_SHOWN)
    return render(request, "alerts.html", {
        "title": "Alerts", "section": "alerts", "live": "alerts", "items": shown, "more": more, "failed": failed,
        "state": state, "provider": provider, "states": ALERT_STATES, "providers": PROVIDERS,
    }, principal=principal)


@page
async def events_view(request: Request, principal: Principal) -> Response:
    container = _container(request)
    outcome = _choice(request, "outcome", tuple(listing.OUTCOMES))
    provider = _choice(request, "provider", PROVIDERS)
    params = request.query_params
    customer_id = query_int(params, "customer_id", 0, 1, MAX_ID) if params.get("customer_id") else None
    before = before_id("e", params["cursor"]) if params.get("cursor") else None
    rows = await run_in_threadpool(lambda: listing.page(container.engine, provider=provider, outcome=outcome,
                                                        customer_id=customer_id, before=before, limit=PAGE + 1))
    shown = rows[:PAGE]
    more = (with_query("/events", outcome=outcome, provider=provider, customer_id=customer_id,
                       cursor=id_cursor("e", shown[-1]["id"])) if len(rows) > PAGE else None)
    return render(request, "events.html", {
        "title": "Inbound events", "section": "events", "rows": shown, "more": more,
        "outcome": outcome, "provider": provider, "outcomes": listing.OUTCOMES, "providers": PROVIDERS,
        "customer_filter": customer_id,
    }, principal=principal)


def _route(path: str, endpoint: Any, method: str = "GET") -> Route:
    return Route(path, endpoint, methods=[method], include_in_schema=False)


ROUTES: list[Route] = [
    _route("/", overview),
    _route("/stuck", stuck),
    _route("/customers/{id:int}", customer),
    _route("/alerts", alerts_view),
    _route("/events", events_view),
    _route("/sign-in", dashboard_auth.sign_in_form),
    _route("/sign-in", dashboard_auth.sign_in, "POST"),
    _route("/sign-out", dashboard_auth.sign_out, "POST"),
    _route("/stuck/acknowledge", dashboard_actions.acknowledge_selected, "POST"),
    _route("/alerts/{id:int}/acknowledge", dashboard_actions.acknowledge, "POST"),
    _route("/customers/{id:int}/poll", dashboard_actions.poll, "POST"),
    _route("/customers/{id:int}/state", dashboard_actions.set_state, "POST"),
    _route("/events/{id:int}/replay", dashboard_actions.replay, "POST"),
    _route("/static/{name}", static_file),
]
