"""Provider-neutral records of what arrived from a provider."""

from __future__ import annotations

from dataclasses import dataclass

from tracker.domain.lifecycle import Signal


class ParseError(ValueError):
    """A payload that cannot be understood. The message says what is wrong, for the 400 answer and the inbox."""


@dataclass(frozen=True)
class ParsedEvent:
    """One inbound provider event, parsed. ``signal`` is None when the event is not about a customer's review."""

    provider: str
    event_type: str
    event_id: str | None
    fingerprint: str
    provider_customer_id: str | None
    customer_type: str | None
    signal: Signal | None
    ignore_reason: str | None = None
    unknown_status: bool = False
