"""Provider-neutral records of what arrived from a provider."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tracker.domain.lifecycle import Signal


class ParseError(ValueError):
    """A payload that cannot be understood. The message says what is wrong, for the 400 answer and the inbox."""


# The longest value the tracker stores for each field (tracker.db.tables sizes its columns with these). A longer
# one is refused when the event is parsed (400, stored raw as ``rejected``): PostgreSQL would refuse the row,
# failing the whole batch it came in, again at every retry of the provider.
MAX_EVENT_ID = 128
MAX_EVENT_TYPE = 64
MAX_CUSTOMER_ID = 128
MAX_STATUS = 64
MAX_ID = 2**63 - 1  # the largest id of a stored row: 64-bit signed integers on both databases


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
    application_id: str | None = None  # connectFi: the application the event is about (how it is polled)

    def __post_init__(self) -> None:
        """Refuse what the tracker could not store as text (``unstorable``)."""
        signal = self.signal
        problem = unstorable((("event_id", self.event_id, MAX_EVENT_ID),
                              ("event_type", self.event_type, MAX_EVENT_TYPE),
                              ("customer id", self.provider_customer_id, MAX_CUSTOMER_ID),
                              ("application id", self.application_id, MAX_CUSTOMER_ID),
                              ("status", signal.provider_status if signal else None, MAX_STATUS),
                              ("comment", signal.comment if signal else None, None)))
        if problem is not None:
            raise ParseError(problem)


def unstorable(fields: Iterable[tuple[str, str | None, int | None]]) -> str | None:
    """Why one of these (name, value, longest stored) cannot be stored as text, or None: a value over its
    column's length, or a NUL character, which PostgreSQL's text never holds."""
    for name, value, limit in fields:
        if value is None:
            continue
        if limit is not None and len(value) > limit:
            return f"{name} is {len(value)} characters long; the tracker stores at most {limit}"
        if "\x00" in value:
            return f"{name} contains a NUL character (\\u0000), which the tracker cannot store"
    return None
