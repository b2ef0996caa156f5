"""Blaaiz simulator: OAuth client credentials, customer reads, the paginated customer list, webhook registration,
and signed ``customer.*`` webhooks (PROVIDERS.md, Blaaiz)."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tracker.clock import Clock
from tracker.providers.simulators.common import SimulatorBase
from tracker.providers.simulators.records import SimRecord, StatusChange, iso_z, json_bytes, placeholder_email

STATUSES = ("PENDING", "PROCESSING", "VERIFIED", "REJECTED")
PART_STATUSES = ("PENDING", "PROCESSING", "APPROVED", "REJECTED")  # owners[] and documents[]
KNOWN_SCOPES = frozenset({"customer:read", "customer:write", "file:upload", "webhook:read", "webhook:write"})
DOCUMENTED_LIMITS: tuple[tuple[int, float], ...] = ((120, 60.0), (1500, 3600.0))
SIGNATURE_HEADER = "x-blaaiz-signature"
TIMESTAMP_HEADER = "x-blaaiz-timestamp"
UNAUTHENTICATED = "Unauthenticated."


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Lowercase hex HMAC-SHA256(secret, f"{timestamp}." + body)."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class BlaaizSimulator(SimulatorBase):
    """Blaaiz API under ``default_base_url`` (any base works: the app serves ``/oauth/token`` and
    ``/api/external/*`` from its root).

    Records are customers keyed by customer id; ``type`` is ``individual`` or ``business``; statuses are the
    raw ``verification_status`` (any string is served as is, to test unknown values)."""

    name = "blaaiz"
    default_base_url = "http://blaaiz.sim"

    def __init__(self, *, clock: Clock | None = None, client_id: str = "sim-blaaiz-client",
                 client_secret: str = "sim-blaaiz-secret", signing_secret: str | None = None,  # noqa: S107
                 latency: float = 0.0, limits: Iterable[tuple[int, float]] = DOCUMENTED_LIMITS,
                 token_lifetime: float | None = 900.0, per_page: int = 15, limit_auth: bool = False,
                 keep_log: bool = True) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        #: the secret returned by POST /api/external/webhook and used to sign webhooks
        self.signing_secret = signing_secret or f"whsec_sim_{secrets.token_hex(16)}"
        #: the URL registered with POST /api/external/webhook (None until then)
        self.collection_url: str | None = None
        self.per_page = per_page
        #: single scopes the token endpoint accepts; anything else (bundles such as ``customer:*``) is a 400
        self.known_scopes: set[str] = set(KNOWN_SCOPES)
        super().__init__(clock=clock, latency=latency, limits=limits, token_lifetime=token_lifetime,
                         limit_auth=limit_auth, keep_log=keep_log)

    def _routes(self) -> list[Route]:
        return [
            self.route("/oauth/token", self._token, ["POST"], kind="auth"),
            self.route("/api/external/customer", self._list, ["GET"]),
            self.route("/api/external/customer/{customer_id}", self._customer, ["GET"]),
            self.route("/api/external/webhook", self._register_webhook, ["POST"]),
        ]

    # ---------------------------------------------------------------------------------- customers

    def add_customer(self, customer_id: str, status: str = "PENDING", *, type: str = "individual",
                     created_at: datetime | None = None, **fields: Any) -> None:
        """Add a customer. ``fields`` join the ``data`` object (business: ``owners=[{"id", "status",
        "admin_comments"}]``, ``documents=[...]``); ``comment=`` is the default webhook comment."""
        self._add(customer_id, status, {"type": type, **fields}, created_at=created_at)

    def add_customers(self, count: int, status: str = "PENDING", *, prefix: str = "cus_sim_",
                      type: str = "individual") -> list[str]:
        ids = [f"{prefix}{i:06d}" for i in range(1, count + 1)]
        for customer_id in ids:
            self.add_customer(customer_id, status, type=type)
        return ids

    def customer_data(self, customer_id: str) -> dict[str, Any]:
        """The ``data`` object of ``GET /api/external/customer/{id}`` as it reads now."""
        record = self.record(customer_id)
        return self._data(record)

    def _data(self, record: SimRecord) -> dict[str, Any]:
        status, updated = record.current(self.clock.now())
        fields = dict(record.fields)
        kind = str(fields.pop("type", "individual"))
        data: dict[str, Any] = {"id": record.id, "type": kind, "email": placeholder_email(record.id),
                                "verification_status": status, "created_at": iso_z(record.created_at, micros=True),
                                "updated_at": iso_z(updated, micros=True)}
        if kind == "business":
            data["owners"] = fields.pop("owners", [])
            data["documents"] = fields.pop("documents", [])
        data.update(fields)
        return data

    # -------------------------------------------------------------------------------- endpoints

    def error_response(self, status: int, code: str, message: str) -> Response:
        body: dict[str, Any] = {"message": message}
        if status == 404:
            body["status"] = False
        return JSONResponse(body, status_code=status)

    def _default_fail_body(self, status: int) -> Response:
        return self.error_response(status, "server_error", "Server Error")

    def _decorate(self, response: Response) -> None:
        state = self.rate_state()
        if state is not None:
            limit, remaining, reset = state
            response.headers["X-RateLimit-Limit"] = str(limit)
            response.headers["X-RateLimit-Remaining"] = str(remaining)
            response.headers["X-RateLimit-Reset"] = str(reset)

    async def _customer_of(self, request: Request) -> str | None:
        value = request.path_params.get("customer_id")
        return str(value) if value is not None else None

    async def _token(self, request: Request) -> Response:
        form = await request.form()
        values = {key: str(form.get(key) or "") for key in ("grant_type", "client_id", "client_secret", "scope")}
        if values["grant_type"] != "client_credentials":
            return JSONResponse({"error": "unsupported_grant_type",
                                 "message": "The grant type must be client_credentials (form-encoded)."},
                                status_code=400)
        if not (hmac.compare_digest(values["client_id"], self.client_id)
                and hmac.compare_digest(values["client_secret"], self.client_secret)):
            return JSONResponse({"message": "Invalid client credentials"}, status_code=401)
        scopes = values["scope"].split()
        refused = [scope for scope in scopes if scope not in self.known_scopes]
        if refused:
            return JSONResponse({"error": "invalid_scope",
                                 "message": f"Invalid scope(s): {' '.join(refused)}. Scope bundles are not allowed; "
                                            "request single scopes separated by spaces."}, status_code=400)
        token = self.issue_token(scopes)
        expires_in = 31536000 if token.expires_at is None else math.ceil(
            (token.expires_at - self.clock.now()).total_seconds())
        return JSONResponse({"token_type": "Bearer", "access_token": token.value, "expires_in": expires_in})

    def _authorize(self, request: Request, scope_prefix: str) -> Response | None:
        header = request.headers.get("authorization", "")
        kind, _, value = header.partition(" ")
        token = self.check_token(value) if kind.lower() == "bearer" else None
        if token is None:
            return self.error_response(401, "unauthenticated", UNAUTHENTICATED)
        if not any(scope == scope_prefix or scope.startswith(scope_prefix) for scope in token.scopes):
            return self.error_response(403, "forbidden",
                                       f"This action is unauthorized: the token lacks the {scope_prefix} scope.")
        return None

    async def _customer(self, request: Request) -> Response:
        refused = self._authorize(request, "customer:read")
        if refused is not None:
            return refused
        customer_id = str(request.path_params["customer_id"])
        if not self.has(customer_id):
            return self.error_response(404, "not_found", "Customer not found")
        return JSONResponse({"message": "Customer retrieved", "data": self.customer_data(customer_id)})

    async def _list(self, request: Request) -> Response:
        refused = self._authorize(request, "customer:read")
        if refused is not None:
            return refused
        query = request.query_params
        wanted_status = query.get("verification_status")
        wanted_type = query.get("type")
        now = self.clock.now()
        chosen = []
        for record in self._records.values():
            if wanted_status and record.current(now)[0] != wanted_status:
                continue
            if wanted_type and record.fields.get("type", "individual") != wanted_type:
                continue
            chosen.append(record)
        chosen.sort(key=lambda r: (r.created_at, r.seq), reverse=True)
        if query.get("paginate", "").lower() not in ("true", "1"):
            return JSONResponse({"message": "Customers retrieved", "data": [self._data(r) for r in chosen]})
        try:
            page = max(1, int(query.get("page", "1")))
        except ValueError:
            return JSONResponse({"message": "The page must be an integer.",
                                 "errors": {"page": ["The page must be an integer."]}}, status_code=422)
        per_page = self.per_page
        total = len(chosen)
        last_page = max(1, math.ceil(total / per_page))
        items = chosen[(page - 1) * per_page: page * per_page]
        first = (page - 1) * per_page + 1 if items else None
        base = str(request.url.remove_query_params("page"))

        def url(number: int) -> str:
            return str(request.url.include_query_params(page=number))

        return JSONResponse({"message": "Customers retrieved", "data": {
            "current_page": page, "data": [self._data(r) for r in items], "first_page_url": url(1),
            "from": first, "last_page": last_page, "last_page_url": url(last_page),
            "next_page_url": url(page + 1) if page < last_page else None, "path": base.split("?")[0],
            "per_page": per_page, "prev_page_url": url(page - 1) if page > 1 else None,
            "to": (first + len(items) - 1) if first is not None else None, "total": total,
        }})

    async def _register_webhook(self, request: Request) -> Response:
        refused = self._authorize(request, "webhook:")
        if refused is not None:
            return refused
        url: Any = None
        if "json" in request.headers.get("content-type", ""):
            try:
                payload = await request.json()
            except ValueError:
                payload = None
            url = payload.get("url") if isinstance(payload, dict) else None
        else:
            url = (await request.form()).get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return JSONResponse({"message": "The url field is required and must be a valid URL.",
                                 "errors": {"url": ["The url field must be a valid URL."]}}, status_code=422)
        self.collection_url = url
        return JSONResponse({"message": "Webhook URL updated successfully",
                             "data": {"collection_url": url, "signing_secret": self.signing_secret}})

    def rotate_secret(self) -> str:
        """A new signing secret (the dashboard's rotation); returns it."""
        self.signing_secret = f"whsec_sim_{secrets.token_hex(16)}"
        return self.signing_secret

    # ---------------------------------------------------------------------------------- webhooks

    def webhook(self, customer_id: str, status: str, *, event_type: str = "customer.status_changed",
                secret: str | None = None, timestamp: int | None = None, **extra: Any) -> tuple[bytes, dict[str, str]]:
        """A signed delivery: ``(body, headers)``. Does not change the customer. ``old_status`` defaults to the
        customer's current status, ``comment`` to its stored comment; ``extra`` overrides or adds body fields
        (``event_id``, ``updated_at``, ``old_status``, ``comment``, ``message``, ...)."""
        record = self._records.get(customer_id)
        now = self.clock.now()
        payload: dict[str, Any] = {
            "message": "Customer status updated", "event_type": event_type, "customer_id": customer_id,
            "customer_email": placeholder_email(customer_id),
            "old_status": record.current(now)[0] if record is not None else "PENDING",
            "new_status": status, "comment": record.comment if record is not None else None,
            "updated_at": iso_z(now, micros=True), "event_id": f"evt_sim_{uuid.uuid4().hex}", "type": "customer",
        }
        payload.update(extra)
        body = json_bytes(payload)
        stamp = str(int(now.timestamp()) if timestamp is None else timestamp)
        headers = {"content-type": "application/json", TIMESTAMP_HEADER: stamp,
                   SIGNATURE_HEADER: sign(secret or self.signing_secret, stamp, body)}
        return body, headers

    async def send_webhook(self, client: httpx.AsyncClient, url: str, customer_id: str, status: str, *,
                           apply: bool = True, **extra: Any) -> httpx.Response:
        """Build and POST a delivery. With ``apply`` (default) a known customer whose status differs takes the
        new status first (as the provider would), so later reads agree with the webhook."""
        body, headers = self.webhook(customer_id, status, **extra)
        if apply and self.has(customer_id) and self.status_of(customer_id) != status:
            fields = {"comment": extra["comment"]} if "comment" in extra else {}
            self.set_status(customer_id, status, **fields)
        return await self._post(client, url, body, headers)

    async def deliver_changes(self, client: httpx.AsyncClient, url: str | None = None) -> list[httpx.Response]:
        """One webhook per status change since the last call (scripts included), to ``url`` or the registered
        collection URL."""
        target = url or self.collection_url
        if target is None:
            raise ValueError("no URL given and no collection URL registered")
        responses = []
        change: StatusChange
        for change in self.pop_changes():
            body, headers = self.webhook(change.record_id, change.new_status, old_status=change.old_status,
                                         updated_at=iso_z(change.at, micros=True))
            responses.append(await self._post(client, target, body, headers))
        return responses
