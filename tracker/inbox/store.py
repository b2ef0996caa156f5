"""Storing deliveries: what a webhook waits for before its answer.

A delivery is authenticated and parsed by the web layer; here it becomes one inbox row, and a batch of them one
statement (``tracker.inbox.writer`` gathers the batches). Duplicates are told apart by the database's unique
indexes. Nothing here reads or writes customers: the applier does that afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from tracker.db import inbox
from tracker.domain.events import ParsedEvent


@dataclass
class Delivery:
    """One authenticated delivery. ``body`` is what is stored (personal data removed)."""

    provider: str
    received_at: datetime
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    parsed: ParsedEvent | None = None
    error: str | None = None  # why it could not be parsed: stored as ``rejected``


@dataclass(frozen=True)
class Receipt:
    """What the sender is told: ``accepted`` (stored, to be applied), ``duplicate`` (stored before),
    ``ignored`` (an event type the tracker does not follow), or ``rejected`` (stored, unreadable: 400)."""

    status: str
    event_id: int
    reason: str | None = None


def row_of(delivery: Delivery) -> dict[str, Any]:
    """The inbox row of a delivery (``inbox.COLUMNS`` by name)."""
    event = delivery.parsed
    signal = event.signal if event is not None else None
    if event is None:
        outcome, reason = "rejected", delivery.error
    elif signal is None or event.provider_customer_id is None:
        outcome, reason = "ignored", event.ignore_reason
    else:
        outcome, reason = inbox.RECEIVED, None
    return {
        "provider": delivery.provider, "event_id": event.event_id if event else None,
        "fingerprint": event.fingerprint if event else None, "event_type": event.event_type if event else None,
        "provider_customer_id": event.provider_customer_id if event else None, "customer_id": None,
        "provider_status": signal.provider_status if signal else None,
        "provider_time": signal.provider_time if signal else None,
        "headers": json.dumps(delivery.headers) if delivery.headers else None, "body": delivery.body,
        "received_at": delivery.received_at,
        "processed_at": None if outcome == inbox.RECEIVED else delivery.received_at,
        "outcome": outcome, "reason": reason, "duplicate_of": None, "attempts": 0, "retry_at": None,
    }


def store(connection: Any, dialect: str, deliveries: Sequence[Delivery], *, wake: bool = False) -> list[Receipt]:
    """Store ``deliveries`` on a driver connection in autocommit mode (``inbox.Connections``) in one statement; a
    receipt for each. A copy of a stored delivery (same event id, or same content) is not stored again: its
    receipt names the first. ``wake``: notify other processes' appliers with it (PostgreSQL)."""
    rows: list[dict[str, Any]] = []
    first: dict[tuple[str, str, str], int] = {}  # (provider, kind, key) -> index in rows: copies in the batch
    copies: dict[int, int] = {}  # delivery index -> rows index of the original in this batch
    placed: dict[int, int] = {}  # delivery index -> rows index
    for index, delivery in enumerate(deliveries):
        event = delivery.parsed
        keys = [] if event is None else [(delivery.provider, kind, key) for kind, key in
                                         (("id", event.event_id), ("print", event.fingerprint)) if key]
        original = next((first[key] for key in keys if key in first), None)
        if original is not None:
            copies[index] = original
            continue
        placed[index] = len(rows)
        for key in keys:
            first[key] = len(rows)
        rows.append(row_of(delivery))
    ids = inbox.store(connection, dialect, rows, wake=wake and any(r["outcome"] == inbox.RECEIVED for r in rows))
    missing = [i for i, row_id in enumerate(ids) if row_id is None]
    found: dict[tuple[str, str, str], int] = {}
    for provider in {rows[i]["provider"] for i in missing}:
        wanted = [rows[i] for i in missing if rows[i]["provider"] == provider]
        for stored_id, event_id, fingerprint in inbox.originals(
                connection, dialect, provider, [r["event_id"] for r in wanted if r["event_id"]],
                [r["fingerprint"] for r in wanted]):
            for kind, value in (("id", event_id), ("print", fingerprint)):
                if value is not None:
                    found[(provider, kind, value)] = stored_id
    receipts = []
    for index in range(len(deliveries)):
        if index in copies:
            receipts.append(_copy_of(ids[copies[index]], rows[copies[index]], found))
            continue
        row, row_id = rows[placed[index]], ids[placed[index]]
        if row_id is None:
            receipts.append(_copy_of(None, row, found))
        elif row["outcome"] == "rejected":
            receipts.append(Receipt("rejected", row_id, row["reason"]))
        else:
            receipts.append(Receipt("ignored" if row["outcome"] == "ignored" else "accepted", row_id, row["reason"]))
    return receipts


def store_now(engine: Engine, deliveries: Sequence[Delivery], *, wake: bool = False) -> list[Receipt]:
    """Store deliveries on a connection of their own (tests, tools)."""
    connections = inbox.Connections(engine)
    try:
        return store(connections.get(), connections.dialect, deliveries, wake=wake)
    finally:
        connections.drop(broken=False)


def _copy_of(stored: int | None, row: dict[str, Any], found: dict[tuple[str, str, str], int]) -> Receipt:
    if stored is None:
        keys = [(row["provider"], "id", row["event_id"]), (row["provider"], "print", row["fingerprint"])]
        stored = next((found[key] for key in keys if key in found), None)
        if stored is None:  # refused as a copy, yet no original: the sender retries (503) rather than be misled
            raise RuntimeError("a delivery was refused as a duplicate but its original was not found")
    return Receipt("duplicate", stored, "already received")
