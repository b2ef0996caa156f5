"""Shared machinery of the provider simulators: records, scripts, faults, rate limits, tokens, the request log.

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
import bisect
import json
import math
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any, Literal

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tracker.clock import Clock, SystemClock

Handler = Callable[[Request], Awaitable[Response]]
RouteKind = Literal["auth", "api"]
FaultKind = Literal["fail", "throttle", "hang"]


def placeholder_email(customer_id: str) -> str:
    """The only e-mail a simulator ever shows: no personal data."""
    return f"customer-{customer_id}@example.invalid"


def http_date(moment: datetime) -> str:
    """RFC 9110 HTTP-date (``Sun, 06 Nov 1994 08:49:37 GMT``)."""
    return format_datetime(moment, usegmt=True)


def parse_rate(text: str) -> tuple[int, float]:
    """``"20/s"``, ``"120/m"``, ``"1500/h"`` (also ``"5/10s"``) -> ``(count, window_seconds)``."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    try:
        count_text, per = text.strip().split("/", 1)
        count = int(count_text)
        per = per.strip().lower()
        unit = units[per[-1]]
        multiple = float(per[:-1]) if per[:-1] else 1.0
    except (ValueError, KeyError, IndexError):
        raise ValueError(f"bad rate {text!r}: expected N/s, N/m or N/h") from None
    if count < 1 or multiple <= 0:
        raise ValueError(f"bad rate {text!r}: count and window must be positive")
    return count, unit * multiple


@dataclass
class RequestRecord:
    """One answered (or abandoned) request."""

    at: datetime  # the simulator's clock at arrival
    monotonic: float  # time.monotonic() at arrival
    method: str
    path: str
    customer_id: str | None
    status: int  # 499: the client went away (timeout) before the answer
    fault: str | None = None  # "fail" | "throttle" | "hang" | "rate_limited" | None
    duration: float = 0.0  # real seconds spent answering
    client: str | None = None  # the peer as "host:port" (tells apart the processes polling a real server)


@dataclass
class Fault:
    kind: FaultKind
    times: int
    path: str | None = None
    customer_id: str | None = None
    status: int = 500
    body: object = None
    retry_after: str | int | float | datetime | None = None
    seconds: float = 0.0

    def matches(self, path: str, customer_id: str | None) -> bool:
        if self.times <= 0:
            return False
        if self.path is not None and self.path not in path:
            return False
        return self.customer_id is None or self.customer_id == customer_id


@dataclass
class SimRecord:
    """One customer (Blaaiz, CryptoPocket) or application (connectFi) as the provider holds it."""

    id: str
    status: str
    fields: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    seq: int
    comment: str | None = None
    script_start: datetime | None = None
    steps: list[tuple[float, str]] = field(default_factory=list)
    announced: str = ""  # last status handed out by pop_changes()

    def current(self, now: datetime) -> tuple[str, datetime]:
        """Status and its change time, with the script applied lazily at ``now``."""
        status, changed = self.status, self.updated_at
        if self.script_start is not None:
            for offset, step_status in self.steps:
                at = self.script_start + timedelta(seconds=offset)
                if at <= now:
                    status, changed = step_status, at
        return status, changed


@dataclass
class StatusChange:
    """A status change that became effective since the last ``pop_changes()`` (intermediate steps coalesced)."""

    record_id: str
    old_status: str
    new_status: str
    at: datetime


@dataclass
class Token:
    value: str
    expires_at: datetime | None
    scopes: frozenset[str] = frozenset()


@dataclass
class Delivery:
    """A webhook or callback the simulator sent."""

    url: str
    body: bytes
    headers: dict[str, str]
    status: int | None  # None: the send failed at the transport level


class TimeoutASGITransport(httpx.ASGITransport):
    """``httpx.ASGITransport`` that honours the client's read timeout (the plain one ignores timeouts).

    With it, ``hang()`` and ``latency`` make the client raise ``httpx.ReadTimeout`` as against a real server."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout") or {}
        read = timeouts.get("read")
        if read is None:
            return await super().handle_async_request(request)
        try:
            return await asyncio.wait_for(super().handle_async_request(request), timeout=float(read))
        except TimeoutError:
            raise httpx.ReadTimeout(f"the simulator did not answer within {read} s", request=request) from None


class HostRouter(httpx.AsyncBaseTransport):
    """One transport for several simulators, chosen by the request's host (the tracker has one HTTP client)."""

    def __init__(self, routes: dict[str, httpx.AsyncBaseTransport]) -> None:
        self.routes = routes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = self.routes.get(request.url.host)
        if transport is None:
            raise httpx.ConnectError(f"no simulator for host {request.url.host}", request=request)
        return await transport.handle_async_request(request)

    @classmethod
    def of(cls, *simulators: SimulatorBase) -> HostRouter:
        return cls({httpx.URL(sim.default_base_url).host: sim.transport() for sim in simulators})


class SimulatorBase:
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

    # ------------------------------------------------------------------------------ fault injection

    def fail(self, times: int = 1, status: int = 500, body: object = None, *, path: str | None = None,
             customer_id: str | None = None) -> None:
        """The next ``times`` matching requests answer ``status`` with ``body`` (JSON-able, or bytes/str sent
        as text; None: the provider's own error body)."""
        self._faults.append(Fault("fail", times, path, customer_id, status=status, body=body))

    def throttle(self, times: int = 1, retry_after: str | int | float | datetime | None = "5", *,
                 path: str | None = None, customer_id: str | None = None) -> None:
        """The next ``times`` matching requests answer 429 with ``Retry-After``: a string as given (seconds or
        an HTTP-date), a number of seconds, a datetime (sent as an HTTP-date; see ``retry_at``), or None
        (no header)."""
        self._faults.append(Fault("throttle", times, path, customer_id, retry_after=retry_after))

    def retry_at(self, seconds: float) -> str:
        """An HTTP-date ``seconds`` after the simulator's clock, for ``throttle(retry_after=...)``."""
        return http_date(self.clock.now() + timedelta(seconds=seconds))

    def hang(self, times: int = 1, seconds: float = 30.0, *, path: str | None = None,
             customer_id: str | None = None) -> None:
        """The next ``times`` matching requests sleep ``seconds`` (real time) before being answered normally."""
        self._faults.append(Fault("hang", times, path, customer_id, seconds=seconds))

    def clear_faults(self) -> None:
        self._faults.clear()

    @property
    def pending_faults(self) -> int:
        return sum(f.times for f in self._faults if f.times > 0)

    def _take_fault(self, path: str, customer_id: str | None) -> Fault | None:
        for fault in self._faults:
            if fault.matches(path, customer_id):
                fault.times -= 1
                self._faults = [f for f in self._faults if f.times > 0]
                return fault
        return None

    # ---------------------------------------------------------------------------------- rate limits

    @property
    def limits(self) -> list[tuple[int, float]]:
        """``[(count, window_seconds), ...]``: sliding windows on the clock. Assigning resets the windows."""
        return list(self._limits)

    @limits.setter
    def limits(self, value: Iterable[tuple[int, float]]) -> None:
        self._limits = [(int(count), float(window)) for count, window in value]
        self._windows = [deque() for _ in self._limits]

    def _prune(self, now: datetime) -> None:
        for (_count, window), stamps in zip(self._limits, self._windows, strict=True):
            edge = now - timedelta(seconds=window)
            while stamps and stamps[0] <= edge:
                stamps.popleft()

    def _admit(self, arrived: datetime | None = None) -> int | None:
        """Count one request that arrived at ``arrived`` (default: now); None if admitted, else whole seconds
        until a slot frees (at least 1). A provider counts requests as they arrive: the latency slept since
        must not move them, nor bunch them when several sleeps end late together on a busy machine."""
        if not self._limits:
            return None
        now = self.clock.now() if arrived is None else arrived
        self._prune(now)
        waits = [
            (stamps[0] + timedelta(seconds=window) - now).total_seconds()
            for (count, window), stamps in zip(self._limits, self._windows, strict=True)
            if len(stamps) >= count
        ]
        if waits:
            return max(1, math.ceil(max(waits)))
        for stamps in self._windows:
            bisect.insort(stamps, now)  # checks can come a little out of arrival order
        return None

    def rate_state(self) -> tuple[int, int, int] | None:
        """``(limit, remaining, reset_epoch)`` of the tightest window, or None without limits."""
        if not self._limits:
            return None
        now = self.clock.now()
        self._prune(now)
        best: tuple[int, int, int] | None = None
        for (count, window), stamps in zip(self._limits, self._windows, strict=True):
            remaining = max(0, count - len(stamps))
            reset_at = (stamps[0] if stamps else now) + timedelta(seconds=window)
            candidate = (count, remaining, math.ceil(reset_at.timestamp()))
            if best is None or remaining < best[1]:
                best = candidate
        return best

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


def json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def iso_z(moment: datetime, *, micros: bool = False) -> str:
    """UTC ISO 8601 with a ``Z``: ``2026-01-05T09:00:00.000Z`` (or ``.000000Z`` with ``micros``)."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{moment.microsecond:06d}" if micros else f"{moment.microsecond // 1000:03d}"
    return f"{text}.{fraction}Z"
