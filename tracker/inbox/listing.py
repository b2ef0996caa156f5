"""Stored events as an operator lists them (``GET /v1/events``): ids, outcomes and reasons, never the body."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from tracker.db import inbox

OUTCOMES = (inbox.RECEIVED, "applied", "no_change", "stale", "conflict", "refused", "error", "ignored", "rejected",
            "duplicate")


def page(engine: Engine, *, provider: str | None = None, outcome: str | None = None,
         customer_id: int | None = None, before: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Up to ``limit`` stored events, newest first, older than the event ``before`` when given."""
    with engine.connect() as conn:
        rows = inbox.page(conn, provider=provider, outcome=outcome, customer_id=customer_id, before=before,
                          limit=limit)
    return [dict(row._mapping) for row in rows]
