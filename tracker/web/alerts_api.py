"""GET /v1/alerts and POST /v1/alerts/{id}/acknowledge."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tracker import alerts
from tracker.domain.events import MAX_ID
from tracker.domain.lifecycle import PROVIDERS
from tracker.errors import NotFound, TrackerError
from tracker.web.requests import (
    MAX_PAGE,
    authorize,
    before_id,
    id_cursor,
    known_params,
    path_id,
    query_choice,
    query_id,
    query_int,
)
from tracker.web.responses import iso, json_response

STATES = ("open", "acknowledged", "resolved")
PARAMETERS = frozenset({"state", "provider", "customer_id", "limit", "cursor", "before"})


def alert_json(row: Any, notices: list[Any]) -> dict[str, Any]:
    detail = json.loads(row.detail) if row.detail else {}
    return {
        "id": row.id, "key": row.key, "kind": row.kind, "provider": row.provider, "customer_id": row.customer_id,
        "attempt": row.attempt, "state": row.state, "title": row.title, "advice": detail.get("advice"),
        "incident_id": row.incident_id, "opened_at": iso(row.opened_at),
        "acknowledged_at": iso(row.acknowledged_at), "acknowledged_by": row.acknowledged_by,
        "resolved_at": iso(row.resolved_at), "repeats": row.repeats,
        "notifications": [{"channel": n.channel, "action": n.action, "state": n.state, "attempts": n.attempts,
                           "last_error": n.last_error, "sent_at": iso(n.sent_at), "key": n.key} for n in notices],
    }


def _list(engine: Engine, state: str | None, limit: int, before: int | None, *, provider: str | None = None,
          customer_id: int | None = None) -> list[dict[str, Any]]:
    return [alert_json(row, notices)
            for row, notices in alerts.page(engine, state, limit, before, provider=provider, customer_id=customer_id)]


async def list_alerts(request: Request) -> Response:
    """Newest first, filtered and paged as the other lists: ``limit``, then ``cursor`` from ``next_cursor``
    (``before``, an alert id, is still taken; ``next_before`` still answered)."""
    await authorize(request, "read")
    params = request.query_params
    known_params(params, PARAMETERS)
    state, provider = query_choice(params, "state", STATES), query_choice(params, "provider", PROVIDERS)
    customer_id = query_id(params, "customer_id")
    limit = query_int(params, "limit", 50, 1, MAX_PAGE)
    if "cursor" in params and "before" in params:
        raise TrackerError("send cursor or before, not both")
    before = query_int(params, "before", 0, 1, MAX_ID) if "before" in params else None
    if "cursor" in params:
        before = before_id("a", params["cursor"])
    container = request.app.state.container
    items = await run_in_threadpool(_list, container.engine, state, limit + 1, before, provider=provider,
                                    customer_id=customer_id)
    page, more = items[:limit], len(items) > limit
    return json_response({"items": page, "next_cursor": id_cursor("a", page[-1]["id"]) if more else None,
                          "next_before": page[-1]["id"] if more else None})


def _acknowledge(engine: Engine, alert_id: int, actor: str, now: Any) -> dict[str, Any]:
    found = alerts.acknowledge_by(engine, alert_id, actor, now)
    if found is None:
        raise NotFound(f"no alert with id {alert_id}")
    return alert_json(*found)


async def acknowledge_alert(request: Request) -> Response:
    principal = await authorize(request, "admin")
    container = request.app.state.container
    body = await run_in_threadpool(_acknowledge, container.engine, path_id(request), principal.name,
                                   container.clock.now())
    container.changes.poke()  # this process's streams read the acknowledgement now
    return json_response(body)
