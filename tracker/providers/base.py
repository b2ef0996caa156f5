"""What every provider adapter offers the poller, and the errors it raises. Provider-neutral."""

from __future__ import annotations

import asyncio
import email.utils
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import httpx

from tracker.clock import Clock
from tracker.domain.lifecycle import Signal

ErrorKind = Literal["auth", "not_found", "forbidden", "rate_limited", "unavailable", "timeout", "invalid",
                    "unexpected"]
RETRYABLE: frozenset[str] = frozenset({"rate_limited", "unavailable", "timeout"})


class ProviderError(Exception):
    """A provider call failed. ``kind`` says how; ``retry_after`` (seconds) is set when the provider said so."""

    def __init__(self, provider: str, kind: ErrorKind, message: str, *, status_code: int | None = None,
                 retry_after: float | None = None, code: str | None = None) -> None:
        super().__init__(f"{provider}: {message}")
        self.provider = provider
        self.kind = kind
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after
        self.code = code

    @property
    def retryable(self) -> bool:
        """Whether the same call may succeed later (as opposed to a problem a person must fix)."""
        return self.kind in RETRYABLE


@dataclass(frozen=True)
class CustomerRef:
    """What an adapter needs to ask about one customer."""

    provider_customer_id: str
    customer_type: str = "individual"
    application_id: str | None = None


@dataclass(frozen=True)
class StatusReport:
    """One provider answer about one customer, mapped to the lifecycle. ``unknown`` when the raw value is not
    documented: it is kept raw, treated as still in progress, and alerted once."""

    provider_customer_id: str
    provider_status: str
    signal: Signal
    unknown: bool = False
    flags: tuple[str, ...] = ()
    detail: dict[str, Any] = field(default_factory=dict)


class Adapter(Protocol):
    name: str

    async def fetch_status(self, customer: CustomerRef) -> StatusReport:
        """The customer's current status at the provider. Raises ``ProviderError``."""
        ...


def unix_time(value: float) -> datetime:
    """Unix seconds as an aware UTC time. Raises ValueError for what no time can hold (NaN, infinities, years
    past 9999 or before 1): such a value in a webhook is refused, never a 500."""
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an integer no float holds (JSON numbers have any length)
        finite = False
    if not finite:
        raise ValueError(f"{value!r:.40} is not a time")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"{value!r:.40} seconds since 1970 is out of the range of times") from None


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP date (RFC 9110)."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        # The obsolete asctime form carries no zone; every HTTP-date is GMT (RFC 9110 section 5.6.7).
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def transport_error(provider: str, exc: httpx.HTTPError) -> ProviderError:
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(provider, "timeout", f"no answer in time ({type(exc).__name__})")
    return ProviderError(provider, "unavailable", f"could not reach the provider ({type(exc).__name__})")


def status_error(provider: str, response: httpx.Response, message: str, now: datetime,
                 code: str | None = None) -> ProviderError:
    """Map an HTTP error status to a ProviderError kind."""
    status = response.status_code
    retry_after = retry_after_seconds(response.headers.get("retry-after"), now)
    kind: ErrorKind
    if status == 401:
        kind = "auth"
    elif status == 403:
        kind = "forbidden"
    elif status == 404:
        kind = "not_found"
    elif status == 429:
        kind = "rate_limited"
    elif status in (408, 502, 503, 504) or status >= 500:
        kind = "unavailable"
    elif 400 <= status < 500:
        kind = "invalid"
    else:
        kind = "unexpected"
    return ProviderError(provider, kind, f"HTTP {status}: {message}", status_code=status, retry_after=retry_after,
                         code=code)


def json_body(provider: str, response: httpx.Response) -> Any:
    """The decoded body. A success must be JSON (else ``unexpected``); an error answer need not be: gateways and
    load balancers answer 502/503/429 with HTML or plain text, and its status code still says what happened, so
    a non-JSON error body is ``None`` and the caller maps the status."""
    try:
        return response.json()
    except ValueError:
        if not response.is_success:
            return None
        raise ProviderError(provider, "unexpected", f"HTTP {response.status_code} with a body that is not JSON",
                            status_code=response.status_code) from None


@dataclass
class _Token:
    value: str
    renew_at: datetime


class TokenCache:
    """One provider token, fetched on demand and renewed before it expires (a minute early, or a tenth of its
    lifetime for short-lived tokens). Concurrent callers share one fetch."""

    def __init__(self, clock: Clock, fetch: Callable[[], Awaitable[tuple[str, datetime]]],
                 renew_margin: timedelta = timedelta(seconds=60)) -> None:
        self._clock = clock
        self._fetch = fetch
        self._margin = renew_margin
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    def _fresh(self) -> str | None:
        token = self._token
        if token is None or self._clock.now() >= token.renew_at:
            return None
        return token.value

    async def get(self) -> str:
        value = self._fresh()
        if value is not None:
            return value
        async with self._lock:
            value = self._fresh()
            if value is not None:
                return value
            started = self._clock.now()
            token, expires_at = await self._fetch()
            self.fetches += 1
            lifetime = max(expires_at - started, timedelta(0))
            self._token = _Token(token, expires_at - min(self._margin, lifetime / 10))
            return token

    def invalidate(self, value: str) -> None:
        """Forget ``value`` (the provider refused it); a newer token fetched meanwhile is kept."""
        if self._token is not None and self._token.value == value:
            self._token = None
