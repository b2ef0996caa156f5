"""The ``/_sim/*`` routes, for benches and demos that run a simulator as a process: its counters, its request
log, adding or changing a record, and a reset. They bypass the request pipeline: never logged, faulted or
limited."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from tracker.providers.simulators.common import SimulatorBase


def control_routes(sim: SimulatorBase) -> list[Route]:
    """The ``/_sim/*`` routes of ``sim``."""

    async def stats(request: Request) -> Response:
        return JSONResponse(sim.stats())

    async def log(request: Request) -> Response:
        """``GET /_sim/log?after=N&path=TEXT``: the request log from entry ``after`` on (default 0), optionally
        only paths containing ``path``; ``next`` is the ``after`` for the following call. Each entry is a row of
        ``fields``: wall-clock arrival (unix seconds, the simulator's clock), ``time.monotonic()`` at arrival,
        method, path, customer id, HTTP status, fault, seconds spent answering, client ``host:port``."""
        try:
            after = max(0, int(request.query_params.get("after", "0")))
        except ValueError:
            return JSONResponse({"error": "after must be a whole number"}, status_code=400)
        path = request.query_params.get("path")
        end = len(sim.requests)
        rows = [[r.at.timestamp(), r.monotonic, r.method, r.path, r.customer_id, r.status, r.fault,
                 round(r.duration, 6), r.client]
                for r in sim.requests[after:end] if path is None or path in r.path]
        return JSONResponse({"fields": ["at", "monotonic", "method", "path", "customer_id", "status", "fault",
                                        "duration", "client"],
                             "next": end, "keep_log": sim.keep_log, "requests": rows})

    async def records(request: Request) -> Response:
        """``POST /_sim/records {"id", "status", ...fields}``: add or change one record."""
        try:
            payload = await request.json()
            record_id = str(payload.pop("id"))
            status = str(payload.pop("status"))
        except (ValueError, KeyError, AttributeError, TypeError):
            return JSONResponse({"error": "expected a JSON object with id and status"}, status_code=400)
        if sim.has(record_id):
            sim.set_status(record_id, status, **payload)
        else:
            sim._add(record_id, status, payload)
        return JSONResponse({"id": record_id, "status": sim.status_of(record_id)})

    async def reset(request: Request) -> Response:
        sim.reset_log()
        return JSONResponse({"reset": True})

    return [Route("/_sim/stats", stats, methods=["GET"]),
            Route("/_sim/log", log, methods=["GET"]),
            Route("/_sim/records", records, methods=["POST"]),
            Route("/_sim/reset", reset, methods=["POST"])]
