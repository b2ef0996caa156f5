"""Which stored events a replay takes (``tracker replay``); the replay itself is ``Applier.replay``."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine

from tracker.db import queries


def replayable(engine: Engine, provider: str | None, outcomes: Sequence[str] | None, after_id: int, limit: int
               ) -> list[int]:
    """Ids of stored events with these outcomes (None: any, but duplicates), after ``after_id``."""
    with engine.connect() as conn:
        return queries.events_to_replay(conn, provider=provider, outcomes=outcomes, after_id=after_id, limit=limit)


def count_replayable(engine: Engine, provider: str | None, outcomes: Sequence[str] | None) -> int:
    with engine.connect() as conn:
        return queries.count_events_to_replay(conn, provider=provider, outcomes=outcomes)
