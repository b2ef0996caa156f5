"""What a channel is given (a ``Notice``) and how it reports failure."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import httpx


@dataclass(frozen=True)
class Notice:
    """One notification about one alert. ``key`` is its idempotency key: a redelivery after a crash carries the
    same key, so receivers can drop the copy. ``alert_key`` is the alert's identity (PagerDuty's dedup_key)."""

    key: str
    alert_key: str
    alert_id: int
    action: str  # trigger | repeat | resolve
    kind: str  # overdue | critical | conflict | unknown_status | incident
    severity: str  # critical | warning | info
    title: str
    advice: str
    provider: str
    created_at: datetime
    customer_id: int | None = None
    provider_customer_id: str | None = None
    reference: str | None = None
    pending_seconds: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.key, "alert": {"id": self.alert_id, "key": self.alert_key, "kind": self.kind},
            "action": self.action, "severity": self.severity, "title": self.title, "advice": self.advice,
            "provider": self.provider, "customer": {
                "id": self.customer_id, "provider_customer_id": self.provider_customer_id,
                "reference": self.reference, "pending_seconds": self.pending_seconds,
            } if self.customer_id is not None else None,
            "details": self.details, "created_at": self.created_at.isoformat().replace("+00:00", "Z"),
        }


class DeliveryError(Exception):
    """A channel could not deliver. ``retryable``: the same notice may succeed later (5xx, 429, timeouts);
    otherwise the channel refused it for good (bad URL, bad key) and retrying will not help."""

    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


class Channel(Protocol):
    name: str

    async def send(self, notice: Notice) -> None:
        """Deliver ``notice`` or raise ``DeliveryError``."""
        ...


def pending_words(seconds: int | None) -> str:
    if seconds is None:
        return "not pending"
    hours, rest = divmod(seconds, 3600)
    minutes = rest // 60
    if hours >= 48:
        return f"{hours // 24} days {hours % 24} h"
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


async def post_json(client: httpx.AsyncClient, url: str, channel: str, *, json: Any = None,
                    content: bytes | None = None, headers: dict[str, str] | None = None,
                    ok: tuple[int, ...] = (200, 201, 202, 204)) -> httpx.Response:
    """POST and map failures: transport errors, 408/429/5xx are retryable; other 4xx are not."""
    try:
        response = await client.post(url, json=json, content=content, headers=headers)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{channel}: could not reach the receiver ({type(exc).__name__})") from None
    if response.status_code in ok:
        return response
    retry_after = None
    header = response.headers.get("retry-after")
    if header:
        try:
            retry_after = float(header)
        except ValueError:
            retry_after = None
    retryable = response.status_code in (408, 425, 429) or response.status_code >= 500
    raise DeliveryError(f"{channel}: HTTP {response.status_code} {response.text[:200]}", retryable=retryable,
                        retry_after=retry_after)
