"""GET /v1/stream: Server-Sent Events of transitions and alert changes, from the change feed.

Each event's ``id`` is its feed id (strictly increasing). A client that reconnects with ``Last-Event-ID`` (browsers
do by themselves) gets everything after it, read from the database, so nothing is missed across a reconnect or
a server restart; without it the stream starts at the present. Filters: ``provider``, ``customer_id``. An idle
stream gets a comment line every ``TRACKER_STREAM_HEARTBEAT``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tracker.domain.events import MAX_ID
from tracker.domain.lifecycle import PROVIDERS
from tracker.errors import TrackerError
from tracker.web.requests import dashboard_principal, known_params, query_choice, query_id

PARAMETERS = frozenset({"provider", "customer_id", "last_event_id"})
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}  # no proxy may hold the events back


def _start(request: Request) -> int | None:
    """Where the client resumes: ``Last-Event-ID`` (or ``?last_event_id=``, for clients that cannot set it)."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_ID:
        raise TrackerError("Last-Event-ID must be the id of an event this stream sent; reconnect without it")
    return int(raw)


async def stream(request: Request) -> Response:
    await dashboard_principal(request, "read")  # a Bearer key, or the dashboard's session (a browser EventSource)
    params = request.query_params
    known_params(params, PARAMETERS)
    provider = query_choice(params, "provider", PROVIDERS)
    customer_id = query_id(params, "customer_id")
    start = _start(request)
    container = request.app.state.container
    hub = container.changes
    await hub.start()
    heartbeat = container.settings.stream_heartbeat.total_seconds()

    def wanted(data: dict[str, Any]) -> bool:
        return ((provider is None or data["provider"] == provider)
                and (customer_id is None or data["customer_id"] == customer_id))

    everything = provider is None and customer_id is None

    async def events() -> AsyncIterator[str | bytes]:
        last = hub.position if start is None else start
        yield f"retry: 2000\n: stream from {last}\n\n"
        while True:
            news = hub.news()
            shared = hub.text_after(last) if everything else None
            if shared is not None:  # the common case: the same bytes as every other stream at this id
                last, text = shared
                yield text
                continue
            entries = await hub.after(last)
            if entries:
                chunk = [e.text for e in entries if wanted(e.data)]
                last = entries[-1].id
                if chunk:
                    yield "".join(chunk)
                continue
            try:
                await asyncio.wait_for(news.wait(), heartbeat)
            except TimeoutError:
                yield ": heartbeat\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=HEADERS)
