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
from tracker.errors import NotFound, TrackerError
from tracker.web.requests import MAX_PAGE, authorize, path_id
from tracker.web.responses import iso, json_response

STATES = ("open", "acknowledged", "resolved")


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


def _list(engine: Engine, state: str | None, limit: int, before: int | None) -> list[dict[str, Any]]:
    return [alert_json(row, notices) for row, notices in alerts.page(engine, state, limit, before)]


async def list_alerts(request: Request) -> Response:
    await authorize(request, "read")
    params = request.query_params
    state = params.get("state")
    if state is not None and state not in STATES:
        raise TrackerError(f"state must be one of {', '.join(STATES)} (or absent for all)")
    try:
        limit = int(params.get("limit", "100"))
        before = int(params["before"]) if "before" in params else None
    except ValueError:
        raise TrackerError("limit and before must be whole numbers") from None
    if not 1 <= limit <= MAX_PAGE:
        raise TrackerError(f"limit must be between 1 and {MAX_PAGE}")
    if before is not None and not 1 <= before <= MAX_ID:
        raise TrackerError(f"before must be an alert id, between 1 and {MAX_ID}")
    container = request.app.state.container
    items = await run_in_threadpool(_list, container.engine, state, limit, before)
    return json_response({"items": items, "next_before": items[-1]["id"] if len(items) == limit else None})


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
    return json_response(body)
