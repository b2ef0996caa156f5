"""Applying one signal to one locked customer row: the lifecycle decision, the row update, the history row.

Shared by the API (submit, uploads) and the poller. Webhook batches go through ``tracker.ingest``, which
decides many events at once but writes the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Row, RowMapping

from tracker.db import queries
from tracker.domain.lifecycle import Decision, Outcome, Signal, State, decide
from tracker.domain.polling import PollPolicy, PollSubject, next_poll


def subject_of(row: Mapping[str, Any] | RowMapping, state: State | None = None, *, polled_at: datetime | None = None,
               signal_at: datetime | None = None, pending_since: datetime | None = None) -> PollSubject:
    """The polling view of a customer row, optionally as it will be after a change."""
    return PollSubject(
        provider=row["provider"], customer_type=row["customer_type"], state=state or State(row["state"]),
        pending_since=pending_since if state is not None else row["pending_since"],
        last_signal_at=signal_at or row["last_signal_at"], last_polled_at=polled_at or row["last_polled_at"],
    )


def rescheduled(row: Mapping[str, Any] | RowMapping, decision: Decision, now: datetime, policy: PollPolicy,
                signal_at: datetime | None = None) -> datetime | None:
    """The customer's next poll after ``decision``."""
    after = decision.after
    return next_poll(subject_of(row, after.state, signal_at=signal_at, pending_since=after.pending_since), policy,
                     now)


def initial_poll(values: Mapping[str, Any] | RowMapping, now: datetime, policy: PollPolicy | None
                 ) -> datetime | None:
    """When to poll a customer first (registration, discovery). connectFi needs the application id to ask."""
    if policy is None or (values["provider"] == "connectfi" and not values.get("application_id")):
        return None
    subject = PollSubject(values["provider"], values["customer_type"], State(values["state"]),
                          values.get("pending_since"), values.get("last_signal_at"), values.get("last_polled_at"))
    return next_poll(subject, policy, now)


class ConcurrentChange(Exception):
    """The row changed between the read and the write (its version moved)."""


@dataclass
class Applied:
    decision: Decision
    changes: list[dict[str, Any]] = field(default_factory=list)


class Effects(Protocol):
    """What else happens, in the same transaction, when a customer moves (escalation deadlines, alerts)."""

    def on_move(self, conn: Connection, row: Mapping[str, Any] | RowMapping, decision: Decision, now: datetime
                ) -> Mapping[str, Any]: ...

    def on_conflict(self, conn: Connection, row: Mapping[str, Any] | RowMapping, signal: Signal, now: datetime,
                    cause: str) -> None: ...


def apply_signal(conn: Connection, row: Row[Any], signal: Signal, now: datetime, actor: str,
                 extra: Callable[[Decision], Mapping[str, Any]] | None = None,
                 event_row_id: int | None = None, policy: PollPolicy | None = None,
                 effects: Effects | None = None) -> Applied:
    """Decide ``signal`` for ``row`` (locked by the caller) and write the result. ``extra`` gives further columns
    to write with it (poll bookkeeping), even when the lifecycle does not change."""
    decision = decide(queries.snapshot_of(row._mapping), signal, now)
    values: dict[str, Any] = {}
    if decision.changed:
        values.update(queries.snapshot_values(decision.after), updated_at=now)
        if policy is not None and decision.moved:
            values["next_poll_at"] = rescheduled(row._mapping, decision, now, policy)
    if effects is not None and decision.moved:
        values.update(effects.on_move(conn, row._mapping, decision, now))
    if effects is not None and decision.outcome is Outcome.CONFLICT:
        effects.on_conflict(conn, row._mapping, signal, now, f"{signal.source.value}:{actor}:{now.isoformat()}")
    values.update(extra(decision) if extra else {})
    if values:
        values.update(_id=row.id, _old_version=row.version)
        values.setdefault("version", row.version)
        if queries.update_customers(conn, [values]) != 1:
            raise ConcurrentChange(f"customer {row.id} changed meanwhile")
    if not decision.moved:
        return Applied(decision)
    assert signal.trigger is not None
    queries.insert_history(conn, [{
        "customer_id": row.id, "from_state": decision.before.state.value, "to_state": decision.after.state.value,
        "trigger": signal.trigger.value, "source": signal.source.value, "event_id": event_row_id,
        "provider_status": signal.provider_status, "provider_time": signal.provider_time, "recorded_at": now,
        "actor": actor, "comment": signal.comment, "version": decision.after.version,
    }])
    change = {"customer_id": row.id, "provider": row.provider, "from": decision.before.state.value,
              "to": decision.after.state.value, "trigger": signal.trigger.value, "source": signal.source.value,
              "version": decision.after.version, "event_id": event_row_id}
    return Applied(decision, [change])
