"""Health, readiness, metrics."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tracker.web.responses import json_response


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    problems = await run_in_threadpool(request.app.state.container.readiness_problems)
    if problems:
        return json_response({"status": "unavailable", "problems": problems}, 503)
    return json_response({"status": "ready"})


async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(request.app.state.container.metrics.render)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


def worker_app(container: Any) -> Starlette:
    """``/healthz`` and ``/metrics`` alone: what ``tracker worker`` serves on ``TRACKER_METRICS_PORT``."""
    app = Starlette(routes=[Route("/healthz", healthz, methods=["GET"]), Route("/metrics", metrics, methods=["GET"])])
    app.state.container = container
    return app
