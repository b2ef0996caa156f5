"""GET /v1/customers/{id}/explain: why the customer is in its state, in words and as data."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from tracker.domain.explain import explain
from tracker.web.requests import authorize, path_id
from tracker.web.responses import json_response


def explanation(container: Any, customer_id: int) -> dict[str, Any]:
    """The explanation of one customer (also the dashboard's); raises NotFound."""
    row, transitions, events, _ = container.customers.history(customer_id)
    return explain(row._mapping, [t._mapping for t in transitions], [e._mapping for e in events],
                   container.clock.now())


async def explain_customer(request: Request) -> Response:
    await authorize(request, "read")
    return json_response(await run_in_threadpool(explanation, request.app.state.container, path_id(request)))
