"""Rendering the dashboard: its Jinja2 templates and their helpers, the headers every page carries, its two
static files, and the error page."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from tracker.apikeys import Principal
from tracker.errors import NotFound
from tracker.web import dashboard_views as views

HERE = Path(__file__).parent
STATIC = HERE / "static"
ASSETS = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8"}
STREAM = "/v1/stream"
# Pages hold customer data and act with the session's key: never cached, never framed, no script but ours.
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
# What a redirect's ``notice`` parameter may say (never text from the request itself).
NOTICES = {
    "signed_out": "You are signed out.",
    "acknowledged": "Acknowledged.",
    "acknowledged_none": "Nothing to acknowledge: those alerts were acknowledged or resolved meanwhile.",
    "polled_changed": "Polled: the provider's answer changed the customer.",
    "polled_unchanged": "Polled: the provider's answer changed nothing.",
    "polled_failed": "The poll failed; its error is shown below.",
    "state_set": "State set; the change and its reason are in the timeline.",
    "state_unchanged": "The customer was in that state already; nothing changed.",
    "replayed": "Replayed; the event's outcome is shown below.",
}


def _asset_version() -> str:
    digest = hashlib.sha256()
    for name in sorted(ASSETS):
        digest.update((STATIC / name).read_bytes())
    return digest.hexdigest()[:12]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(
        span=views.span, stamp=views.stamp, clock_time=views.clock_time, relative=views.relative,
        standing=views.standing, tier_of=views.tier_of, guidance=views.guidance, provider_name=views.provider_name,
        state_words=views.state_words, TIER_WORDS=views.TIER_WORDS,
        TIERS=views.TIERS, asset_version=_asset_version(),
    )
    env.filters["fromjson"] = lambda text: json.loads(text) if text else {}
    return env


templates = Jinja2Templates(env=_environment())


def stream_path(request: Request) -> str:
    """The live stream's path when this app serves one (else the pages do not open an EventSource at all, so
    a browser logs no failed request)."""
    for route in request.app.routes:
        if isinstance(route, Route) and route.path == STREAM and "GET" in (route.methods or ()):
            return STREAM
    return ""


def render(request: Request, name: str, context: Mapping[str, Any], *, principal: Principal | None,
           status: int = 200) -> Response:
    container = request.app.state.container
    notice = NOTICES.get(request.query_params.get("notice", ""), "")
    if notice and request.query_params.get("count", "").isdigit():
        notice = f"{notice[:-1]}: {request.query_params['count']}."
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in ("notice", "count")]
    here = request.url.path + (f"?{urlencode(kept)}" if kept else "")  # this page, for a form to come back to
    body = {"title": "", "section": "", "here": here, "live": "", "customer_id": "", "notice": notice, "error": "",
            "principal": principal, "admin": principal is not None and principal.allows("admin"),
            "now": container.clock.now(), "stream": stream_path(request) if principal else "", **context}
    return templates.TemplateResponse(request, name, body, status_code=status, headers=HEADERS)


def error_page(request: Request, principal: Principal | None, status: int, message: str) -> Response:
    titles = {400: "Bad request", 401: "Not signed in", 403: "Not allowed", 404: "Not found", 409: "Conflict",
              422: "Not accepted", 503: "Try again later"}
    return render(request, "error.html", {"title": titles.get(status, "Error"), "message": message,
                                          "status": status}, principal=principal, status=status)


def local_path(value: Any, default: str = "/") -> str:
    """A path on this site to go back to (a form's or the sign-in's ``next``): anything else is ``default``,
    so no link can send a signed-in operator elsewhere."""
    if (not isinstance(value, str) or not value.startswith("/") or value.startswith("//") or "\\" in value
            or any(ord(c) < 32 for c in value) or len(value) > 2000):
        return default
    return value


def with_query(path: str, **params: Any) -> str:
    """``path`` with ``params`` (those not None) added to its query."""
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    if not extra:
        return path
    return f"{path}{'&' if '?' in path else '?'}{extra}"


async def static_file(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        raise NotFound(f"no static file {name!r}")
    return FileResponse(STATIC / name, media_type=ASSETS[name],
                        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"})
