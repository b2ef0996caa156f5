"""Signing in to the dashboard: the API key is kept in an HttpOnly, SameSite=Strict session cookie (never in a
URL or a page). Every page needs a valid key (``page``); every action is a POST from the dashboard's own origin
with an ``admin`` key (``action``)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tracker.apikeys import Principal
from tracker.errors import Forbidden, TrackerError, Unauthorized
from tracker.web.dashboard_render import error_page, local_path, render, with_query
from tracker.web.requests import SESSION_COOKIE, authorize_header, dashboard_principal

log = logging.getLogger("tracker.web")
Handler = Callable[[Request, Principal], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]
SIGN_IN = "/sign-in"
MAX_KEY = 256
CROSS_SITE = ("This action must be sent from the dashboard's own pages, and this request came from another site "
              "(or did not say where it came from). Open the dashboard and try again.")


def same_origin(request: Request) -> bool:
    """Whether the browser says the request comes from this site's own pages: ``Sec-Fetch-Site`` where it sends
    one, else ``Origin`` naming this host. A request that says neither is refused."""
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return False
    host = request.headers.get("host", "")
    return bool(host) and urlsplit(origin).netloc.lower() == host.lower()


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _to_sign_in(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse(with_query(SIGN_IN, next=target if target != "/" else None), 303)
    if SESSION_COOKIE in request.cookies:  # a revoked or mistyped key: forget it
        response.delete_cookie(SESSION_COOKIE, path="/", secure=_secure(request), httponly=True, samesite="strict")
    return response


def page(handler: Handler) -> Endpoint:
    """A page for any valid key; without one, the sign-in page (which brings the reader back here)."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            principal = await dashboard_principal(request, "read")
        except Unauthorized:
            return _to_sign_in(request)
        try:
            return await handler(request, principal)
        except TrackerError as exc:
            return error_page(request, principal, exc.status, exc.message)

    return endpoint


def action(handler: Handler) -> Endpoint:
    """A state-changing POST: from this site's own pages (403 else), signed in, with an ``admin`` key (403
    with what the key's scope is else). Errors are shown on the error page with their status."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        if not same_origin(request):
            return error_page(request, None, 403, CROSS_SITE)
        try:
            principal = await dashboard_principal(request, "read")
        except Unauthorized:
            return _to_sign_in(request)
        if not principal.allows("admin"):
            return error_page(request, principal, 403,
                              f"The key {principal.name} has scope {principal.scope}; this action needs an admin "
                              "key. Sign out and sign in with an admin key to act.")
        try:
            return await handler(request, principal)
        except TrackerError as exc:
            return error_page(request, principal, exc.status, exc.message)

    return endpoint


def _sign_in_page(request: Request, message: str = "", status: int = 200) -> Response:
    return render(request, "signin.html", {"title": "Sign in", "problem": message,
                                           "next": local_path(request.query_params.get("next"))},
                  principal=None, status=status)


async def sign_in_form(request: Request) -> Response:
    try:
        await dashboard_principal(request, "read")
    except (Unauthorized, Forbidden):
        response = _sign_in_page(request)
        if SESSION_COOKIE in request.cookies:
            response.delete_cookie(SESSION_COOKIE, path="/", secure=_secure(request), httponly=True,
                                   samesite="strict")
        return response
    return RedirectResponse(local_path(request.query_params.get("next")), 303)


async def sign_in(request: Request) -> Response:
    """Check the key the form posts; keep it in the session cookie, or refuse it (401) with the reason."""
    if not same_origin(request):
        return error_page(request, None, 403, CROSS_SITE)
    form = await request.form()
    key, target = form.get("key"), local_path(form.get("next"))
    key = key.strip() if isinstance(key, str) else ""
    if not key:
        return _sign_in_page(request, "Enter an API key (an operator creates one with tracker keys create).", 401)
    try:
        if len(key) > MAX_KEY:
            raise Unauthorized("too long")
        principal = await authorize_header(request.app.state.container.api_keys, f"Bearer {key}", "read")
    except Unauthorized:
        return _sign_in_page(request, "That API key is not valid: it is unknown, revoked or mistyped.", 401)
    log.info("dashboard: %s signed in (scope %s)", principal.name, principal.scope)
    response = RedirectResponse(target, 303)
    # No Max-Age nor Expires: the cookie ends with the browser session.
    response.set_cookie(SESSION_COOKIE, key, path="/", secure=_secure(request), httponly=True, samesite="strict")
    return response


async def sign_out(request: Request) -> Response:
    if not same_origin(request):
        return error_page(request, None, 403, CROSS_SITE)
    response = RedirectResponse(with_query(SIGN_IN, notice="signed_out"), 303)
    response.delete_cookie(SESSION_COOKIE, path="/", secure=_secure(request), httponly=True, samesite="strict")
    return response
