"""Shared machinery of the provider simulators: the request pipeline, customer records and scripts, tokens, the
request log (faults and rate limits: ``faults``; the values they deal in: ``records``).

A simulator is a small Starlette app that speaks one provider's documented API (PROVIDERS.md) with outcomes
set by the test or bench: statuses, scripted status changes over (clock) time, latency, failures, 429s, hangs
and rate limits. Every piece of time comes from the injected ``Clock``, except latency and hangs, which are real
``asyncio.sleep`` calls (they exist to exercise client timeouts), and the monotonic stamps used to measure
concurrency and request rates in benches.

Order of work for each request: arrival (log stamps, in-flight count) -> ``latency`` -> injected fault
(``fail`` / ``throttle`` answer at once; ``hang`` sleeps, then the request carries on) -> rate limits (which
count each request at its arrival time, as a provider does) -> the provider's handler. Every answer, faults
included, is logged in ``requests``.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tracker.clock import Clock, SystemClock
from tracker.providers.simulators.faults import FaultsAndLimits
from tracker.providers.simulators.records import (
    Delivery,
    Fault,
    RequestRecord,
    SimRecord,
    StatusChange,
    TimeoutASGITransport,
    Token,
    http_date,
)

Handler = Callable[[Request], Awaitable[Response]]
RouteKind = Literal["auth", "api"]



class SimulatorBase(FaultsAndLimits):
    """Common state and request pipeline. Subclasses add routes and the provider's own answers."""

    #: the provider name (``blaaiz``, ``connectfi``, ``cryptopocket``)
    name = "simulator"
    #: base URL to hand to the adapter when running over ASGITransport
    default_base_url = "http://simulator.test"

    def __init__(self, *, clock: Clock | None = None, latency: float = 0.0,
                 limits: Iterable[tuple[int, float]] = (), token_lifetime: float | None = 3600.0,
                 limit_auth: bool = False, keep_log: bool = True) -> None:
        self.clock: Clock = clock or SystemClock()
        #: real seconds slept at the start of every request
        self.latency = latency
        #: seconds a new token lives (None: never expires); read when the token is issued
        self.token_lifetime = token_lifetime
        #: whether the auth endpoint counts towards (and is refused by) the rate limits
        self.limit_auth = limit_auth
        #: keep every RequestRecord (switch off for very long benches; counters still work)
        self.keep_log = keep_log
        self.requests: list[RequestRecord] = []
        self.deliveries: list[Delivery] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.peak_per_second = 0  # most arrivals within any 1 s of monotonic time
        self.total_requests = 0
        self._recent: deque[float] = deque()
        self._limits: list[tuple[int, float]] = []
        self._windows: list[deque[datetime]] = []
        self.limits = list(limits)
        self._faults: list[Fault] = []
        self._records: dict[str, SimRecord] = {}
        self._seq = 0
        self._tokens: dict[str, Token] = {}
        self.app = Starlette(routes=[*self._routes(), *self._control_routes()])

    # ----------------------------------------------------------------------------------------- routes

    def _routes(self) -> list[Route]:
        raise NotImplementedError

    def route(self, path: str, handler: Handler, methods: Sequence[str], kind: RouteKind = "api") -> Route:
        """A provider route served through the common pipeline (log, latency, faults, limits)."""

        async def endpoint(request: Request) -> Response:
            return await self._serve(request, handler, kind)

        return Route(path, endpoint, methods=list(methods))

    def _control_routes(self) -> list[Route]:
        """``/_sim/*``: for benches that run the simulator as a process. Not logged, never faulted or limited."""
        return [Route("/_sim/stats", self._stats_endpoint, methods=["GET"]),
                Route("/_sim/log", self._log_endpoint, methods=["GET"]),
                Route("/_sim/records", self._records_endpoint, methods=["POST"]),
                Route("/_sim/reset", self._reset_endpoint, methods=["POST"])]

    async def _stats_endpoint(self, request: Request) -> Response:
        return JSONResponse(self.stats())

    async def _log_endpoint(self, request: Request) -> Response:
        """``GET /_sim/log?after=N&path=TEXT``: the request log from entry ``after`` on (default 0), optionally
        only paths containing ``path``; ``next`` is the ``after`` for the following call. Each entry is a row of
        ``fields``: wall-clock arrival (unix seconds, the simulator's clock), ``time.monotonic()`` at arrival,
        method, path, customer id, HTTP status, fault, seconds spent answering, client ``host:port``."""
        try:
            after = max(0, int(request.query_params.get("after", "0")))
        except ValueError:
            return JSONResponse({"error": "after must be a whole number"}, status_code=400)
        path = request.query_params.get("path")
        end = len(self.requests)
        rows = [[r.at.timestamp(), r.monotonic, r.method, r.path, r.customer_id, r.status, r.fault,
                 round(r.duration, 6), r.client]
                for r in self.requests[after:end] if path is None or path in r.path]
        return JSONResponse({"fields": ["at", "monotonic", "method", "path", "customer_id", "status", "fault",
                                        "duration", "client"],
                             "next": end, "keep_log": self.keep_log, "requests": rows})

    async def _records_endpoint(self, request: Request) -> Response:
        """``POST /_sim/records {"id", "status", ...fields}``: add or change one record."""
        try:
            payload = await request.json()
            record_id = str(payload.pop("id"))
            status = str(payload.pop("status"))
        except (ValueError, KeyError, AttributeError, TypeError):
            return JSONResponse({"error": "expected a JSON object with id and status"}, status_code=400)
        if record_id in self._records:
            self.set_status(record_id, status, **payload)
        else:
            self._add(record_id, status, payload)
        return JSONResponse({"id": record_id, "status": self.status_of(record_id)})

    async def _reset_endpoint(self, request: Request) -> Response:
        self.reset_log()
        return JSONResponse({"reset": True})

    # ------------------------------------------------------------------------------------ pipeline

    async def _serve(self, request: Request, handler: Handler, kind: RouteKind) -> Response:
        arrived = time.monotonic()
        at = self.clock.now()
        self.total_requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._recent.append(arrived)
        while self._recent and self._recent[0] <= arrived - 1.0:
            self._recent.popleft()
        self.peak_per_second = max(self.peak_per_second, len(self._recent))
        path = request.url.path
        customer_id: str | None = None
        status = 499
        fault_name: str | None = None
        try:
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            customer_id = await self._customer_of(request)
            response: Response | None = None
            fault = self._take_fault(path, customer_id)
            if fault is not None:
                fault_name = fault.kind
                if fault.kind == "hang":
                    await asyncio.sleep(fault.seconds)
                elif fault.kind == "fail":
                    response = self._fault_response(fault)
                else:
                    response = self._throttle_response(self._retry_after_header(fault.retry_after))
            if response is None and (kind == "api" or self.limit_auth):
                wait = self._admit(at)
                if wait is not None:
                    fault_name = "rate_limited"
                    response = self._throttle_response(str(wait))
            if response is None:
                response = await handler(request)
            if kind == "api":
                self._decorate(response)
            status = response.status_code
            return response
        except Exception:
            status = 500
            raise
        finally:
            self.in_flight -= 1
            if self.keep_log:
                peer = request.client
                self.requests.append(RequestRecord(at, arrived, request.method, path, customer_id, status,
                                                   fault_name, time.monotonic() - arrived,
                                                   f"{peer.host}:{peer.port}" if peer is not None else None))

    async def _customer_of(self, request: Request) -> str | None:
        """The customer (or application) a request is about, for the log and fault filters."""
        return None

    def _decorate(self, response: Response) -> None:
        """Provider-specific headers on every API answer (Blaaiz: the X-RateLimit-* set)."""

    # ---- provider-specific answers (overridden) ----

    def error_response(self, status: int, code: str, message: str) -> Response:
        return JSONResponse({"error": code, "message": message}, status_code=status)

    def _default_fail_body(self, status: int) -> Response:
        return self.error_response(status, "unexpected_error", "Simulated server error")

    def _throttle_response(self, retry_after: str | None) -> Response:
        response = self.error_response(429, "too_many_requests", "Too Many Attempts.")
        if retry_after is not None:
            response.headers["Retry-After"] = retry_after
        return response

    def _fault_response(self, fault: Fault) -> Response:
        if fault.body is None:
            return self._default_fail_body(fault.status)
        if isinstance(fault.body, bytes | str):
            return Response(fault.body, status_code=fault.status, media_type="text/plain")
        return JSONResponse(fault.body, status_code=fault.status)

    def _retry_after_header(self, value: str | int | float | datetime | None) -> str | None:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, datetime):
            return http_date(value)
        return str(math.ceil(value))

    # ------------------------------------------------------------------------------------- tokens

    def issue_token(self, scopes: Iterable[str] = ()) -> Token:
        lifetime = self.token_lifetime
        expires = None if lifetime is None else self.clock.now() + timedelta(seconds=lifetime)
        token = Token(f"sim_{self.name}_{secrets.token_urlsafe(24)}", expires, frozenset(scopes))
        self._tokens[token.value] = token
        return token

    def check_token(self, value: str | None) -> Token | None:
        """The token if it was issued and has not expired (per the clock), else None."""
        if not value:
            return None
        token = self._tokens.get(value.strip())
        if token is None:
            return None
        if token.expires_at is not None and self.clock.now() >= token.expires_at:
            return None
        return token

    def expire_tokens(self) -> None:
        """Every token issued so far becomes invalid: the next data call fails the provider's way."""
        self._tokens.clear()

    # ---------------------------------------------------------------------------- customer records

    def _add(self, record_id: str, status: str, fields: dict[str, Any], *, created_at: datetime | None = None
             ) -> SimRecord:
        now = self.clock.now()
        self._seq += 1
        comment = fields.pop("comment", None)
        record = SimRecord(record_id, status, dict(fields), created_at or now, created_at or now, self._seq,
                           comment=comment, announced=status)
        self._records[record_id] = record
        return record

    def record(self, record_id: str) -> SimRecord:
        try:
            return self._records[record_id]
        except KeyError:
            raise KeyError(f"{self.name} simulator has no record {record_id!r}") from None

    def has(self, record_id: str) -> bool:
        return record_id in self._records

    def remove(self, record_id: str) -> None:
        self._records.pop(record_id, None)

    @property
    def record_ids(self) -> list[str]:
        return list(self._records)

    def status_of(self, record_id: str) -> str:
        """The status as a request would see it now (scripts applied)."""
        return self.record(record_id).current(self.clock.now())[0]

    def set_status(self, record_id: str, status: str, **fields: Any) -> None:
        """Change the status now (drops any script); ``fields`` update the record (``comment=`` is kept for
        webhooks)."""
        record = self.record(record_id)
        now = self.clock.now()
        if "comment" in fields:
            record.comment = fields.pop("comment")
        record.fields.update(fields)
        record.status = status
        record.updated_at = now
        record.script_start = None
        record.steps = []

    def script(self, record_id: str, steps: Sequence[tuple[float, str]]) -> None:
        """From now (per the clock), the status becomes ``steps[i][1]`` once ``steps[i][0]`` seconds have
        passed. Read lazily at request time; ``set_status`` drops the script."""
        record = self.record(record_id)
        now = self.clock.now()
        record.status, record.updated_at = record.current(now)
        record.script_start = now
        record.steps = sorted(((float(offset), status) for offset, status in steps), key=lambda step: step[0])

    def pop_changes(self) -> list[StatusChange]:
        """Status changes (set_status or scripts) since the last call, one per record, for demos that turn
        them into webhooks."""
        now = self.clock.now()
        changes: list[StatusChange] = []
        for record in self._records.values():
            status, at = record.current(now)
            if status != record.announced:
                changes.append(StatusChange(record.id, record.announced, status, at))
                record.announced = status
        return changes

    # -------------------------------------------------------------------------------- request log

    def count(self, path_contains: str | None = None, customer_id: str | None = None, *,
              status: int | None = None, method: str | None = None) -> int:
        return sum(1 for r in self.requests
                   if (path_contains is None or path_contains in r.path)
                   and (customer_id is None or r.customer_id == customer_id)
                   and (status is None or r.status == status)
                   and (method is None or r.method == method.upper()))

    def max_in_window(self, seconds: float = 1.0, *, by: Literal["monotonic", "clock"] = "monotonic",
                      path_contains: str | None = None) -> int:
        """Most logged requests that arrived within any ``seconds`` (real monotonic time, or the clock)."""
        if by == "clock":
            stamps = sorted(r.at.timestamp() for r in self.requests
                            if path_contains is None or path_contains in r.path)
        else:
            stamps = sorted(r.monotonic for r in self.requests if path_contains is None or path_contains in r.path)
        best = 0
        start = 0
        for end, stamp in enumerate(stamps):
            while stamps[start] <= stamp - seconds:
                start += 1
            best = max(best, end - start + 1)
        return best

    def reset_log(self) -> None:
        """Forget the request log and the counters (not the records, faults, tokens or windows)."""
        self.requests.clear()
        self.deliveries.clear()
        self.max_in_flight = self.in_flight
        self.peak_per_second = 0
        self.total_requests = 0
        self._recent.clear()

    def stats(self) -> dict[str, Any]:
        by_status: dict[str, int] = {}
        for r in self.requests:
            by_status[str(r.status)] = by_status.get(str(r.status), 0) + 1
        return {"provider": self.name, "total_requests": self.total_requests, "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight, "peak_per_second": self.peak_per_second,
                "by_status": by_status, "records": len(self._records)}

    # ------------------------------------------------------------------------------------ clients

    def transport(self) -> TimeoutASGITransport:
        """An httpx transport into this app that honours client read timeouts."""
        return TimeoutASGITransport(app=self.app)

    def client(self, base_url: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` wired to this simulator (``base_url`` defaults to ``default_base_url``)."""
        return httpx.AsyncClient(transport=self.transport(), base_url=base_url or self.default_base_url, **kwargs)

    async def _post(self, client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]
                    ) -> httpx.Response:
        try:
            response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError:
            self.deliveries.append(Delivery(url, body, headers, None))
            raise
        self.deliveries.append(Delivery(url, body, headers, response.status_code))
        return response
