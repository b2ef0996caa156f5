"""The simulators' values: what a request, a fault, a customer record, a token and a delivery look like, the
transports that route a client to a simulator, and small formats (dates, compact JSON)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any, Literal

import httpx

if TYPE_CHECKING:
    from tracker.providers.simulators.common import SimulatorBase

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


def json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def iso_z(moment: datetime, *, micros: bool = False) -> str:
    """UTC ISO 8601 with a ``Z``: ``2026-01-05T09:00:00.000Z`` (or ``.000000Z`` with ``micros``)."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{moment.microsecond:06d}" if micros else f"{moment.microsecond // 1000:03d}"
    return f"{text}.{fraction}Z"
