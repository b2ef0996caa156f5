"""What Blaaiz's customer statuses and times mean to the tracker (PROVIDERS.md, Blaaiz), and a customer record
read by polling mapped to a ``StatusReport``. Webhook parsing and the API client both build on these."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tracker.domain.events import ParseError
from tracker.domain.lifecycle import Signal, Source, Trigger
from tracker.providers.base import StatusReport, unix_time

NAME = "blaaiz"

# verification_status / new_status -> lifecycle trigger. PENDING means both "nothing submitted" and "under
# review" at Blaaiz: on its own it moves nothing.
STATUS_TRIGGERS: dict[str, Trigger | None] = {
    "PENDING": None,
    "PROCESSING": Trigger.PROVIDER_REVIEWING,
    "VERIFIED": Trigger.PROVIDER_APPROVED,
    "REJECTED": Trigger.PROVIDER_REJECTED,
}


def parse_time(value: Any) -> datetime | None:
    """Blaaiz timestamps: ISO 8601 with or without zone (UTC assumed), or unix seconds; None when absent.
    Raises ValueError for a value that is present but is no time: ordering by it is impossible, and treating
    it as absent would skip the stale check."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return unix_time(value)
    if not isinstance(value, str):
        raise ValueError(f"{type(value).__name__} is not a time")
    text = value.strip().replace(" ", "T", 1)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{value[:40]!r} is not an ISO 8601 time") from None
    try:
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00: before year 1 once in UTC
        raise ValueError(f"{value[:40]!r} is out of the range of times once in UTC") from None


def map_status(customer: Mapping[str, Any]) -> StatusReport:
    """Map a Blaaiz customer record (``data`` of GET /api/external/customer/{id}) to the lifecycle. Pure."""
    raw = customer.get("verification_status")
    if not isinstance(raw, str) or not raw:
        raise ParseError("the customer record has no verification_status")
    status = raw.strip().upper()
    known = status in STATUS_TRIGGERS
    comment: str | None = None
    flags: tuple[str, ...] = ()
    if status == "REJECTED":
        comments = [str(item["admin_comments"]) for key in ("owners", "documents")
                    for item in customer.get(key) or () if isinstance(item, dict) and item.get("admin_comments")]
        comment = "; ".join(comments) or None
        if customer.get("type") == "business" and not comments:
            # PROVIDERS.md: a rejected business with no admin comments is itself a case for Blaaiz support.
            flags = ("rejected_without_comments",)
    try:
        provider_time = parse_time(customer.get("updated_at"))
    except ValueError:  # the status read is still the provider's word; only the stale check goes without it
        provider_time = None
    signal = Signal(trigger=STATUS_TRIGGERS.get(status), source=Source.POLL, provider_status=status,
                    provider_time=provider_time, comment=comment)
    return StatusReport(str(customer.get("id", "")), status, signal, unknown=not known, flags=flags,
                        detail={"type": customer.get("type")})
