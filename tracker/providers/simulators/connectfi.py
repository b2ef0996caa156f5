"""connectFi (PayGears) simulator: ``/auth/get-token``, the ``/akepa`` status, list and identification calls, and
the unsigned status callback (PROVIDERS.md, connectFi)."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tracker.clock import Clock
from tracker.providers.simulators.common import SimulatorBase
from tracker.providers.simulators.records import SimRecord, iso_z, json_bytes

STATUSES = ("pending_step_up", "pending_documents", "waiting_review", "pending_journey_application_review",
            "running", "data_request", "completed")
OUTCOMES = ("Approved", "approved", "Denied", "declined")
TOKEN_HEADER = "x-connectfi-token"  # noqa: S105 (a header name)


def entity_outcome_for(outcome: str | None) -> str | None:
    """The entity's spelling of a journey outcome: ``Approved`` -> ``approved``, ``Denied`` -> ``declined``."""
    if outcome is None:
        return None
    lowered = outcome.lower()
    if lowered == "approved":
        return "approved"
    if lowered in ("denied", "declined"):
        return "declined"
    return outcome


class ConnectFiSimulator(SimulatorBase):
    """connectFi API under ``default_base_url`` (the app serves ``/auth/get-token`` and ``/akepa/*`` from its root).

    Records are applications keyed by application id: ``script``, ``set_status``, ``status_of`` take an
    application id. ``set_status(app_id, "completed", outcome="Denied")`` sets the outcome too; the outcome is
    shown only while the status is ``completed``."""

    name = "connectfi"
    default_base_url = "http://connectfi.sim"

    def __init__(self, *, clock: Clock | None = None, login: str = "sim-connectfi-login",
                 password: str = "sim-connectfi-password", aggregator_id: str = "agg_sim_1",  # noqa: S107
                 latency: float = 0.0,
                 limits: Iterable[tuple[int, float]] = (), token_lifetime: float | None = 1800.0,
                 initial_status: str = "pending_documents", limit_auth: bool = False, keep_log: bool = True) -> None:
        self.login = login
        self.password = password
        self.aggregator_id = aggregator_id
        #: status of an application started with POST /akepa/identification
        self.initial_status = initial_status
        super().__init__(clock=clock, latency=latency, limits=limits, token_lifetime=token_lifetime,
                         limit_auth=limit_auth, keep_log=keep_log)

    def _routes(self) -> list[Route]:
        return [
            self.route("/auth/get-token", self._token, ["POST"], kind="auth"),
            self.route("/akepa/status", self._status, ["POST"]),
            self.route("/akepa/list", self._list, ["POST"]),
            self.route("/akepa/identification", self._identification, ["POST"]),
        ]

    # ------------------------------------------------------------------------------- applications

    def add_application(self, application_id: str, customer_id: str, status: str = "pending_documents",
                        outcome: str | None = None, reference: str | None = None, *,
                        entity_outcome: str | None = None, webhook_url: str | None = None,
                        created_at: datetime | None = None) -> None:
        """Add an application of ``customer_id``. ``entity_outcome`` defaults to the entity spelling of
        ``outcome`` (``approved`` / ``declined``)."""
        self._add(application_id, status, {"customerId": customer_id, "reference": reference, "outcome": outcome,
                                           "entity_outcome": entity_outcome, "webhook_url": webhook_url},
                  created_at=created_at)

    def add_applications(self, count: int, status: str = "waiting_review", *, prefix: str = "sim_"
                         ) -> list[str]:
        """``count`` applications ``{prefix}app_NNNNNN`` of customers ``{prefix}cust_NNNNNN``; returns the
        application ids."""
        ids = []
        for i in range(1, count + 1):
            ids.append(f"{prefix}app_{i:06d}")
            self.add_application(ids[-1], f"{prefix}cust_{i:06d}", status)
        return ids

    def _add(self, record_id: str, status: str, fields: dict[str, Any], *, created_at: datetime | None = None
             ) -> SimRecord:
        fields = dict(fields)
        fields.setdefault("customerId", fields.pop("customer_id", f"cust_of_{record_id}"))
        fields.setdefault("reference", None)
        fields.setdefault("outcome", None)
        return super()._add(record_id, status, fields, created_at=created_at)

    def application_data(self, application_id: str) -> dict[str, Any]:
        """The ``data`` object of ``/akepa/status`` (and of the callback) as it reads now."""
        return self._data(self.record(application_id))

    def _data(self, record: SimRecord) -> dict[str, Any]:
        status, _ = record.current(self.clock.now())
        completed = status == "completed"
        outcome = record.fields.get("outcome") if completed else None
        entity = record.fields.get("entity_outcome") or entity_outcome_for(outcome)
        return {
            "applicationId": record.id, "aggregatorId": self.aggregator_id,
            "customerId": record.fields.get("customerId"), "reference": record.fields.get("reference"),
            "status": status, "outcome": outcome,
            "entityApplications": [{"entityId": record.fields.get("entity_id", record.fields.get("customerId")),
                                    "isCustomer": True, "status": status,
                                    "outcome": entity if completed else None}],
        }

    # -------------------------------------------------------------------------------- endpoints

    @staticmethod
    def _request_id() -> str:
        return str(uuid.uuid4())

    def error_response(self, status: int, code: str, message: str) -> Response:
        return JSONResponse({"requestId": self._request_id(), "code": code, "message": message},
                            status_code=status)

    def _default_fail_body(self, status: int) -> Response:
        return self.error_response(status, "internalServerError", "Simulated internal error")

    def _throttle_response(self, retry_after: str | None) -> Response:
        response = self.error_response(429, "tooManyRequests", "Too many requests")
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response

    def _ok(self, data: Any) -> Response:
        return JSONResponse({"code": "0", "data": data, "requestId": self._request_id()})

    async def _json(self, request: Request) -> dict[str, Any] | None:
        try:
            payload = await request.json()
        except ValueError:
            return None
        return payload if isinstance(payload, dict) else None

    async def _customer_of(self, request: Request) -> str | None:
        if request.url.path.startswith("/auth"):
            return None
        payload = await self._json(request)
        value = payload.get("customerId") if payload else None
        return str(value) if isinstance(value, str | int) and value != "" else None

    def _validation(self, message: str, field_name: str) -> Response:
        return JSONResponse({"requestId": self._request_id(), "code": "requestValidateError",
                             "context": {"field": field_name}, "message": message}, status_code=400)

    async def _token(self, request: Request) -> Response:
        payload = await self._json(request)
        user = payload.get("user") if payload else None
        if not isinstance(user, dict) or not isinstance(user.get("login"), str) \
                or not isinstance(user.get("password"), str):
            return self._validation('"user.login" and "user.password" are required', "user")
        if not (hmac.compare_digest(user["login"], self.login) and hmac.compare_digest(user["password"],
                                                                                         self.password)):
            return JSONResponse({"code": "unauthorized", "message": "Invalid login or password"}, status_code=401)
        token = self.issue_token()
        expires = token.expires_at or self.clock.now() + timedelta(days=3650)
        return JSONResponse({"code": "0", "data": {"token": token.value, "dtsExpireAt": iso_z(expires)}})

    def _authorize(self, request: Request) -> Response | None:
        if self.check_token(request.headers.get(TOKEN_HEADER)) is None:
            return self.error_response(401, "unauthorized", "Token is missing, invalid or expired")
        return None

    async def _status(self, request: Request) -> Response:
        refused = self._authorize(request)
        if refused is not None:
            return refused
        payload = await self._json(request)
        if payload is None:
            return self._validation("The body must be a JSON object", "body")
        customer_id, application_id = payload.get("customerId"), payload.get("applicationId")
        if not isinstance(customer_id, str) or not customer_id:
            return self._validation('"customerId" is required', "customerId")
        if not isinstance(application_id, str) or not application_id:
            return self._validation('"applicationId" is required', "applicationId")
        record = self._records.get(application_id)
        if record is None or record.fields.get("customerId") != customer_id:
            return self.error_response(404, "applicationNotFound", "Application not found")
        return self._ok(self._data(record))

    async def _list(self, request: Request) -> Response:
        refused = self._authorize(request)
        if refused is not None:
            return refused
        payload = await self._json(request)
        customer_id = payload.get("customerId") if payload else None
        if not isinstance(customer_id, str) or not customer_id:
            return self._validation('"customerId" is required', "customerId")
        records = sorted((r for r in self._records.values() if r.fields.get("customerId") == customer_id),
                         key=lambda r: (r.created_at, r.seq), reverse=True)
        return self._ok([self._data(r) for r in records])

    async def _identification(self, request: Request) -> Response:
        """Start a journey: ``{customerId, reference, webhookURL?}`` -> a new application."""
        refused = self._authorize(request)
        if refused is not None:
            return refused
        payload = await self._json(request)
        customer_id = payload.get("customerId") if payload else None
        if payload is None or not isinstance(customer_id, str) or not customer_id:
            return self._validation('"customerId" is required', "customerId")
        application_id = f"app_sim_{uuid.uuid4().hex[:16]}"
        webhook = payload.get("webhookURL") or payload.get("webhookUrl")
        self.add_application(application_id, customer_id, self.initial_status,
                             reference=payload.get("reference"),
                             webhook_url=webhook if isinstance(webhook, str) else None)
        return self._ok(self.application_data(application_id))

    # ---------------------------------------------------------------------------------- callbacks

    def callback(self, application_id: str, **extra: Any) -> bytes:
        """The callback body for the application as it reads now; ``extra`` overrides ``data`` fields."""
        data = {**self.application_data(application_id), **extra}
        return json_bytes({"code": "0", "data": data, "requestId": self._request_id()})

    async def send_callback(self, client: httpx.AsyncClient, url: str, application_id: str, **extra: Any
                            ) -> httpx.Response:
        """POST the callback (unsigned; the URL carries the tracker's token)."""
        return await self._post(client, url, self.callback(application_id, **extra),
                                {"content-type": "application/json"})

    async def deliver_changes(self, client: httpx.AsyncClient, url: str | None = None) -> list[httpx.Response]:
        """One callback per application whose status changed since the last call, to ``url`` or the
        application's own ``webhookURL`` (applications with neither are skipped)."""
        responses = []
        for change in self.pop_changes():
            target = url or self.record(change.record_id).fields.get("webhook_url")
            if target:
                responses.append(await self.send_callback(client, str(target), change.record_id))
        return responses
