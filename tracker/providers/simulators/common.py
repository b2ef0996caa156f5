"""The base of every provider simulator: its state, its request pipeline, the provider-specific answers a
subclass overrides, and the httpx clients wired to it. The rest of its machinery is mixed in from next door:
customer records and scripts (``store``), tokens (``tokens``), the request and delivery logs (``traffic``),
faults and rate limits (``faults``); the ``/_sim/*`` routes are in ``control``, the values they all deal in in
``records``.

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
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tracker.clock import Clock, SystemClock
from tracker.providers.simulators.control import control_routes
from tracker.providers.simulators.faults import FaultsAndLimits
from tracker.providers.simulators.records import (
    Delivery,
    Fault,
    RequestRecord,
    SimRecord,
    TimeoutASGITransport,
    Token,
    http_date,
)
from tracker.providers.simulators.store import RecordStore
from tracker.providers.simulators.tokens import TokenIssuer
from tracker.providers.simulators.traffic import TrafficLog

Handler = Callable[[Request], Awaitable[Response]]
RouteKind = Literal["auth", "api"]


class SimulatorBase(RecordStore, TokenIssuer, TrafficLog, FaultsAndLimits):
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
        return control_routes(self)

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

    # ------------------------------------------------------------------------------------ clients

    def transport(self) -> TimeoutASGITransport:
        """An httpx transport into this app that honours client read timeouts."""
        return TimeoutASGITransport(app=self.app)

    def client(self, base_url: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        """An ``httpx.AsyncClient`` wired to this simulator (``base_url`` defaults to ``default_base_url``)."""
        return httpx.AsyncClient(transport=self.transport(), base_url=base_url or self.default_base_url, **kwargs)
