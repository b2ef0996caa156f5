"""CryptoPocket simulator: ``/api/authenticate``, ``/api/kyc/check``, ``/api/subscribeToWebhook`` and signed KYC
webhooks (PROVIDERS.md, CryptoPocket).

The app is the host: give adapters ``base_url = default_base_url + "/api"`` (the documented base ending in
``/api``), so ``.../api/authenticate`` is served and a doubled ``.../api/api/...`` is a 404.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tracker.clock import Clock
from tracker.providers.simulators.common import SimulatorBase
from tracker.providers.simulators.records import json_bytes

STATUSES = ("valid", "fail", "unused", "processing")
TOKEN_HEADER = "auth"  # noqa: S105 (a header name)
API_KEY_HEADER = "X-API-Key"
SIGNATURE_HEADER = "X-Signature"
TIMESTAMP_HEADER = "X-Timestamp"


def sign(secret: str, body: bytes, timestamp: str, encoding: Literal["hex", "base64"] = "hex") -> str:
    """HMAC-SHA256(api_secret, body + timestamp), no separator; hex or base64 digest."""
    digest = hmac.new(secret.encode(), body + timestamp.encode(), hashlib.sha256)
    return digest.hexdigest() if encoding == "hex" else base64.b64encode(digest.digest()).decode()


class CryptoPocketSimulator(SimulatorBase):
    """CryptoPocket API. Records are users keyed by user id; statuses are the raw ``kyc_status``."""

    name = "cryptopocket"
    default_base_url = "http://cryptopocket.sim"
    #: what to hand adapters as their base URL (the documented base ends in /api)
    api_base_url = "http://cryptopocket.sim/api"

    def __init__(self, *, clock: Clock | None = None, api_key: str = "sim-cryptopocket-key",
                 api_secret: str = "sim-cryptopocket-secret", latency: float = 0.0,  # noqa: S107
                 limits: Iterable[tuple[int, float]] = (), token_lifetime: float | None = 3600.0,
                 unknown_user_http_status: Literal[200, 404] = 200, limit_auth: bool = False,
                 keep_log: bool = True) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        #: unknown users: HTTP 200 {"status": "error", "error": "user_not_found"} (default) or the same body as 404
        self.unknown_user_http_status: int = unknown_user_http_status
        self.forbidden: set[str] = set()
        #: ``{type: url}`` set with POST /api/subscribeToWebhook
        self.webhook_urls: dict[str, str] = {}
        super().__init__(clock=clock, latency=latency, limits=limits, token_lifetime=token_lifetime,
                         limit_auth=limit_auth, keep_log=keep_log)

    def _routes(self) -> list[Route]:
        return [
            self.route("/api/authenticate", self._authenticate, ["POST"], kind="auth"),
            self.route("/api/kyc/check", self._check, ["GET"]),
            self.route("/api/subscribeToWebhook", self._subscribe, ["POST"]),
        ]

    # --------------------------------------------------------------------------------------- users

    def add_customer(self, user_id: str, status: str = "unused", *, created_at: datetime | None = None,
                     **fields: Any) -> None:
        """Add a user; ``fields`` join the ``/api/kyc/check`` answer."""
        self._add(user_id, status, dict(fields), created_at=created_at)

    add_user = add_customer

    def add_customers(self, count: int, status: str = "processing", *, prefix: str = "usr_sim_") -> list[str]:
        ids = [f"{prefix}{i:06d}" for i in range(1, count + 1)]
        for user_id in ids:
            self.add_customer(user_id, status)
        return ids

    def forbid(self, user_id: str) -> None:
        """``/api/kyc/check`` for this user answers 403 ``user_not_in_integration``."""
        self.forbidden.add(user_id)

    def allow(self, user_id: str) -> None:
        self.forbidden.discard(user_id)

    # -------------------------------------------------------------------------------- endpoints

    def error_response(self, status: int, code: str, message: str) -> Response:
        return JSONResponse({"status": "error", "error": code}, status_code=status)

    def _default_fail_body(self, status: int) -> Response:
        return self.error_response(status, "unexpected_error", "")

    async def _customer_of(self, request: Request) -> str | None:
        return request.query_params.get("user_id") or None

    async def _fields(self, request: Request) -> dict[str, Any]:
        if "json" in request.headers.get("content-type", ""):
            try:
                payload = await request.json()
            except ValueError:
                return {}
            return payload if isinstance(payload, dict) else {}
        return {key: value for key, value in (await request.form()).items() if isinstance(value, str)}

    async def _authenticate(self, request: Request) -> Response:
        payload = await self._fields(request)
        key, secret = payload.get("api_key"), payload.get("api_secret")
        if not isinstance(key, str) or not isinstance(secret, str) or not (
                hmac.compare_digest(key, self.api_key) and hmac.compare_digest(secret, self.api_secret)):
            return self.error_response(200, "authorization_incorrect", "")
        return JSONResponse({"status": "success", "token": self.issue_token().value})

    async def _check(self, request: Request) -> Response:
        if self.check_token(request.headers.get(TOKEN_HEADER)) is None:
            return self.error_response(200, "authorization_incorrect", "")
        user_id = request.query_params.get("user_id")
        if not user_id:
            return JSONResponse({"message": "The user id field is required.",
                                 "errors": {"user_id": ["The user id field is required."]}}, status_code=422)
        if user_id in self.forbidden:
            return self.error_response(403, "user_not_in_integration", "")
        record = self._records.get(user_id)
        if record is None:
            return self.error_response(self.unknown_user_http_status, "user_not_found", "")
        status, _ = record.current(self.clock.now())
        return JSONResponse({"status": "success", "user_id": user_id, "kyc_status": status, **record.fields})

    async def _subscribe(self, request: Request) -> Response:
        if self.check_token(request.headers.get(TOKEN_HEADER)) is None:
            return self.error_response(200, "authorization_incorrect", "")
        payload = await self._fields(request)
        kind, url = payload.get("type"), payload.get("url")
        if not isinstance(kind, str) or not kind or not isinstance(url, str) or not url:
            return JSONResponse({"message": "The type and url fields are required.",
                                 "errors": {"type": ["required"], "url": ["required"]}}, status_code=422)
        self.webhook_urls[kind] = url
        return JSONResponse({"status": "success"})

    # ---------------------------------------------------------------------------------- webhooks

    def webhook(self, user_id: str, status: str, *, encoding: Literal["hex", "base64"] = "hex",
                secret: str | None = None, timestamp: int | None = None, **extra: Any
                ) -> tuple[bytes, dict[str, str]]:
        """A signed delivery ``(body, headers)``; does not change the user. ``extra`` overrides or adds body
        fields; ``timestamp`` (unix seconds) defaults to the clock."""
        stamp = int(self.clock.now().timestamp()) if timestamp is None else timestamp
        payload: dict[str, Any] = {"event": "kyc.status_changed", "user_id": user_id, "kyc_status": status,
                                   "timestamp": stamp}
        payload.update(extra)
        body = json_bytes(payload)
        headers = {"content-type": "application/json", API_KEY_HEADER: self.api_key, TIMESTAMP_HEADER: str(stamp),
                   SIGNATURE_HEADER: sign(secret or self.api_secret, body, str(stamp), encoding)}
        return body, headers

    async def send_webhook(self, client: httpx.AsyncClient, url: str, user_id: str, status: str, *,
                           apply: bool = True, **extra: Any) -> httpx.Response:
        """Build and POST a delivery; with ``apply`` a known user whose status differs takes it first."""
        body, headers = self.webhook(user_id, status, **extra)
        if apply and self.has(user_id) and self.status_of(user_id) != status:
            self.set_status(user_id, status)
        return await self._post(client, url, body, headers)

    async def deliver_changes(self, client: httpx.AsyncClient, url: str | None = None) -> list[httpx.Response]:
        """One webhook per status change since the last call, to ``url`` or the subscribed ``kyc`` URL."""
        target = url or self.webhook_urls.get("kyc")
        if target is None:
            raise ValueError("no URL given and no kyc webhook subscribed")
        responses = []
        for change in self.pop_changes():
            body, headers = self.webhook(change.record_id, change.new_status)
            responses.append(await self._post(client, target, body, headers))
        return responses
