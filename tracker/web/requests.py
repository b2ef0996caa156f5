"""Reading requests: bounded bodies, JSON, API keys, query parameters."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from tracker.apikeys import ApiKeys, Principal
from tracker.domain.events import MAX_ID
from tracker.errors import Forbidden, NotFound, TrackerError, Unauthorized
from tracker.settings import MAX_WEBHOOK_BODY


class PayloadTooLarge(TrackerError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(TrackerError):
    status = 415
    code = "unsupported_media_type"


def is_json(content_type: str) -> bool:
    """Whether a Content-Type header value names JSON (``application/json`` or ``application/*+json``)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def read_body(request: Request, limit: int = MAX_WEBHOOK_BODY) -> bytes:
    """The body, refusing anything over ``limit`` bytes before reading it whole (413)."""
    too_large = PayloadTooLarge(f"the body is over {limit // 1024} KiB; send at most {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large
        except ValueError:
            raise TrackerError("Content-Length is not a number") from None
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request) -> dict[str, Any]:
    if not is_json(request.headers.get("content-type", "")):
        raise UnsupportedMediaType("send the body as JSON with Content-Type: application/json")
    body = await read_body(request)
    try:
        data = decode_json(body) if body else None
    except ValueError as exc:
        raise TrackerError(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise TrackerError("the body must be a JSON object", code="invalid_json")
    return data


# Twenty digits in a row may be an integer past 64 bits, which orjson reads as a float (losing digits).
_LONG_NUMBER = re.compile(rb"[0-9]{20}")


def decode_json(body: bytes) -> Any:
    """orjson where it can; the standard library for what orjson refuses or misreads (integers past 64 bits,
    which it reads as floats; NaN; UTF-16), and for the message that explains a body that is not JSON at all.
    Raises ValueError with the reason, also for a body nested too deeply for either (a 400, not a
    RecursionError's 500).

    An escaped lone surrogate (``"\\ud800"``) is valid JSON to the standard library, but no text column can
    store it: such a body is refused too."""
    if not _LONG_NUMBER.search(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        payload = json.loads(body)
        require_text(payload)
    except RecursionError:
        raise ValueError("it is nested too deeply") from None
    return payload


def require_text(data: Any) -> None:
    """Raise ValueError if decoded JSON holds a string no text column can store: an escaped lone surrogate
    (``"\\ud800"``), which the standard library decodes but UTF-8 cannot encode."""
    try:
        json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise ValueError("it contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff), which is not text"
                         ) from None


def bearer_token(authorization: str) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` header value, or None."""
    kind, _, token = authorization.partition(" ")
    token = token.strip()
    return token if kind.lower() == "bearer" and token else None


async def authorize(request: Request, scope: str) -> Principal:
    """The caller's key, which must allow ``scope``: 401 without a valid key, 403 with too small a scope."""
    return await authorize_header(request.app.state.container.api_keys, request.headers.get("authorization", ""),
                                  scope)


SESSION_COOKIE = "tracker_session"  # the dashboard's: the API key, HttpOnly and SameSite=Strict (dashboard_auth)


async def dashboard_principal(request: Request, scope: str) -> Principal:
    """``authorize`` for what a browser also reads: the ``Authorization: Bearer`` key when the header is sent (the
    same path), else the key in the dashboard's session cookie (its pages, an EventSource). 401 without a valid
    key, 403 with too small a scope. Safe for GETs as is; a state-changing request that takes the cookie must also
    check that it comes from the dashboard's own origin (``dashboard_auth.same_origin``)."""
    authorization = request.headers.get("authorization")
    if authorization is None:
        session = request.cookies.get(SESSION_COOKIE)
        if not session:
            raise Unauthorized("send an API key as 'Authorization: Bearer <key>', or sign in to the dashboard at /")
        authorization = f"Bearer {session}"
    return await authorize_header(request.app.state.container.api_keys, authorization, scope)


async def authorize_header(keys: ApiKeys, authorization: str, scope: str) -> Principal:
    """``authorize`` for an ``Authorization`` header value (endpoints that are plain ASGI apps)."""
    token = bearer_token(authorization)
    if token is None:
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>' (create one with tracker keys create)")
    principal = keys.from_cache(token)
    if principal is None:
        principal = await _authenticate(keys, token)
    if principal is None:
        raise Unauthorized("the API key is not valid (unknown, revoked or mistyped)")
    if not principal.allows(scope):
        raise Forbidden(f"this API key has scope {principal.scope}; this call needs {scope}")
    assert isinstance(principal, Principal)
    return principal


_checking: dict[tuple[int, str], asyncio.Task[Principal | None]] = {}


async def _authenticate(keys: ApiKeys, token: str) -> Principal | None:
    """Check a key that is not in the cache (a database read, in a worker thread). Requests that bring the same
    key meanwhile wait for that one check: when a busy client's cached key expires, its many in-flight requests
    cost one read, not one each."""
    loop = asyncio.get_running_loop()
    slot = (id(keys), token)
    task = _checking.get(slot)
    if task is None or task.get_loop() is not loop:
        task = loop.create_task(run_in_threadpool(keys.authenticate, token))
        _checking[slot] = task
        task.add_done_callback(lambda done: _checking.pop(slot, None) if _checking.get(slot) is done else None)
    return await asyncio.shield(task)


MAX_PAGE = 500  # the most items a list answers at once


def query_int(params: Any, name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter from ``low`` to ``high`` (``default`` when absent); 400 naming it else."""
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise TrackerError(f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise TrackerError(f"{name} must be between {low} and {high}")
    return value


def query_choice(params: Any, name: str, choices: Sequence[str], default: str | None = None) -> str | None:
    """A query parameter that takes one of ``choices`` (``default`` when absent); 400 naming them else."""
    value = params.get(name)
    if value is None:
        return default
    if value not in choices:
        raise TrackerError(f"{name} must be one of {', '.join(choices)}")
    return str(value)


def query_id(params: Any, name: str) -> int | None:
    """An id given as a query parameter (None when absent); 400 when it is not one."""
    return query_int(params, name, 0, 1, MAX_ID) if name in params else None


def id_cursor(kind: str, last_id: int) -> str:
    """The opaque ``next_cursor`` of a list ordered by id, newest first (``kind``: one letter per list)."""
    return base64.urlsafe_b64encode(f"{kind}{last_id}".encode()).decode().rstrip("=")


def before_id(kind: str, cursor: str) -> int:
    """The id a list's ``cursor`` (from ``id_cursor``) continues before; 400 for any other text."""
    try:
        text = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode()
        value = int(text[1:]) if text.startswith(kind) and text[1:].isdigit() else 0
    except (binascii.Error, UnicodeDecodeError, ValueError):
        value = 0
    if not 0 < value <= MAX_ID:
        raise TrackerError("cursor is not one this service gave out; start again without it")
    return value


def known_params(params: Any, known: frozenset[str]) -> None:
    """400 naming the first query parameter a list does not take (a typo must not widen the answer)."""
    unknown = sorted(set(params) - known)
    if unknown:
        raise TrackerError(f"unknown parameter {unknown[0]!r}; this list takes {', '.join(sorted(known))}")


def checked_id(value: Any, what: str = "id") -> int:
    """An id from a path: larger than any id can be is simply not found (404), on SQLite as on PostgreSQL,
    never a database overflow (500)."""
    assert isinstance(value, int)
    if value > MAX_ID:
        raise NotFound(f"no such {what}: ids are at most {MAX_ID}")
    return value


def path_id(request: Request, name: str = "id") -> int:
    return checked_id(request.path_params[name])
