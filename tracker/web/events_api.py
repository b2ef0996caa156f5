"""GET /v1/events: the stored inbound events with their outcome and reason, for an operator (never the body,
which is what the provider sent, personal fields removed, and is kept for replays only)."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tracker.domain.lifecycle import PROVIDERS
from tracker.inbox import listing
from tracker.web.requests import (
    MAX_PAGE,
    authorize,
    before_id,
    id_cursor,
    known_params,
    query_choice,
    query_id,
    query_int,
)
from tracker.web.responses import iso, json_response

PARAMETERS = frozenset({"provider", "outcome", "customer_id", "limit", "cursor"})


def event_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "provider": row["provider"], "event_id": row["event_id"], "event_type": row["event_type"],
        "provider_customer_id": row["provider_customer_id"], "customer_id": row["customer_id"],
        "provider_status": row["provider_status"], "provider_time": iso(row["provider_time"]),
        "received_at": iso(row["received_at"]), "processed_at": iso(row["processed_at"]),
        "outcome": row["outcome"], "reason": row["reason"], "attempts": row["attempts"],
        "duplicate_of": row["duplicate_of"],
    }


async def list_events(request: Request) -> Response:
    await authorize(request, "read")
    params = request.query_params
    known_params(params, PARAMETERS)
    provider = query_choice(params, "provider", PROVIDERS)
    outcome = query_choice(params, "outcome", listing.OUTCOMES)
    customer_id = query_id(params, "customer_id")
    limit = query_int(params, "limit", 50, 1, MAX_PAGE)
    before = before_id("e", params["cursor"]) if "cursor" in params else None
    rows = await run_in_threadpool(listing.page, request.app.state.container.engine, provider=provider,
                                   outcome=outcome, customer_id=customer_id, before=before, limit=limit + 1)
    page, more = rows[:limit], len(rows) > limit
    return json_response({"items": [event_json(row) for row in page],
                          "next_cursor": id_cursor("e", page[-1]["id"]) if more else None})
