"""A change of one customer and everything that follows it, decided without I/O: the plan.

``plan`` takes a customer as read, one signal and the time, and returns what is to be stored: the customer's
new columns (snapshot, deadline and tier, next poll, flags), its history row, the alerts to raise, whether its
open tier alerts are to be resolved, and the change notice. Every source of change (webhooks through the
applier, polls, the API, escalation checks, replays) plans here, and ``tracker.transitions.writes`` is the
only code that turns plans into rows, so the same move has the same effects whatever caused it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from tracker.domain.escalation import EscalationPolicy, Tier, next_deadline
from tracker.domain.lifecycle import Decision, Outcome, Signal, Snapshot, Source, State, decide
from tracker.domain.polling import PollPolicy, PollSubject, next_poll

SNAPSHOT_FIELDS = ("state", "version", "pending_since", "decided_at", "last_provider_time", "attempts",
                   "rejections", "rejection_reason", "provider_status")
# The inbox's name for each lifecycle outcome.
OUTCOMES = {Outcome.APPLIED: "applied", Outcome.NOOP: "no_change", Outcome.NO_TRIGGER: "no_change",
            Outcome.REFUSED: "refused", Outcome.CONFLICT: "conflict", Outcome.STALE: "stale"}
PROVIDER_SOURCES = frozenset({Source.WEBHOOK, Source.POLL})
FUTURE_TIME = "future_provider_time"  # the flag of a customer sent a provider time far ahead of the clock
# The customers' columns ``Customer.of`` reads.
CUSTOMER_COLUMNS = ("id", "provider", "provider_customer_id", "customer_type", *SNAPSHOT_FIELDS, "tier", "flags",
                    "reference", "application_id", "last_signal_at", "last_polled_at")


class Columns(Protocol):
    """A row by column name (a SQLAlchemy ``RowMapping``, or a dict)."""

    def __getitem__(self, name: str, /) -> Any: ...


@dataclass(frozen=True)
class Customer:
    """What a plan needs to know of a customer: its identity, lifecycle snapshot and what follows a move."""

    id: int
    provider: str
    provider_customer_id: str
    customer_type: str
    snapshot: Snapshot
    tier: str = Tier.NONE.value
    flags: tuple[str, ...] = ()
    reference: str | None = None
    application_id: str | None = None
    last_signal_at: datetime | None = None
    last_polled_at: datetime | None = None

    @classmethod
    def of(cls, row: Columns) -> Customer:
        """From a ``customers`` row (or a mapping with its columns)."""
        values = {name: row[name] for name in SNAPSHOT_FIELDS}
        values["state"] = State(values["state"])
        return cls(id=row["id"], provider=row["provider"], provider_customer_id=row["provider_customer_id"],
                   customer_type=row["customer_type"], snapshot=Snapshot(**values), tier=row["tier"],
                   flags=tuple(json.loads(row["flags"])) if row["flags"] else (), reference=row["reference"],
                   application_id=row["application_id"], last_signal_at=row["last_signal_at"],
                   last_polled_at=row["last_polled_at"])

    def named(self) -> dict[str, Any]:
        """What an alert and its notices say about the customer."""
        return {"id": self.id, "provider": self.provider, "provider_customer_id": self.provider_customer_id,
                "customer_type": self.customer_type, "reference": self.reference,
                "pending_since": self.snapshot.pending_since, "version": self.snapshot.version}


@dataclass(frozen=True)
class NewAlert:
    """An alert to raise (once per ``key``): a conflict or an undocumented status value. Tier alerts are
    raised by escalation, which may fold them into a provider incident."""

    key: str
    kind: str
    provider: str
    title: str
    customer: Mapping[str, Any] | None = None
    detail: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Rules:
    """The policies a plan follows. None: that effect is not planned (a test, a bare replay)."""

    escalation: EscalationPolicy | None = None
    polling: PollPolicy | None = None
    # A provider time further ahead of the tracker's clock than this is not trusted for ordering: one event
    # dated in the far future would otherwise make every later real event stale, and freeze the customer.
    clock_skew: timedelta = timedelta(minutes=5)


@dataclass(frozen=True)
class Plan:
    """What one signal does to one customer. ``values``: the columns to write (empty: none), written only where
    the row still has ``before``'s version."""

    before: Customer
    after: Customer
    decision: Decision
    signal: Signal
    values: dict[str, Any]
    history: dict[str, Any] | None = None
    alerts: tuple[NewAlert, ...] = ()
    resolve_tier_alerts: bool = False
    change: dict[str, Any] | None = None
    notes: tuple[str, ...] = field(default=())  # said in the event's reason (an undocumented value, ...)

    @property
    def outcome(self) -> str:
        return OUTCOMES[self.decision.outcome]

    @property
    def reason(self) -> str:
        return "; ".join((*self.notes, self.decision.reason))


def plan(customer: Customer, signal: Signal, now: datetime, rules: Rules, *, actor: str,
         event_id: int | None = None, unknown_status: str | None = None, cause: str | None = None,
         flags: tuple[str, ...] = (), extra: Mapping[str, Any] | None = None,
         received_at: datetime | None = None) -> Plan:
    """Plan ``signal`` for ``customer`` at ``now``. ``unknown_status``: a value the provider does not document
    (flagged and alerted once per customer and value). ``cause`` tells one contradiction of a verified customer
    from another (its alert's key). ``flags``: flags the signal raises on the customer. ``extra``: further
    columns the caller writes with it (poll bookkeeping). ``received_at``: when the signal reached the tracker
    (by default ``now``); a provider time more than ``rules.clock_skew`` after it is ordered as if sent then,
    and flagged ``future_provider_time`` on the customer and in the outcome's reason (the history row keeps
    the time as sent)."""
    notes: list[str] = []
    sent = signal
    received = received_at or now
    if signal.provider_time is not None and signal.provider_time - received > rules.clock_skew:
        notes.append(f"{FUTURE_TIME}: the provider dated it {signal.provider_time.isoformat()}, more than "
                     f"{rules.clock_skew} after its receipt; ordered by its receipt time")
        flags = (*flags, FUTURE_TIME)
        signal = replace(signal, provider_time=received)
    decision = decide(customer.snapshot, signal, now)
    values: dict[str, Any] = {}
    after = customer
    if decision.changed:
        values.update(snapshot_values(decision.after))
        if decision.after.version != decision.before.version:  # a change readers see (else: the provider's clock)
            values["updated_at"] = now
        after = replace(after, snapshot=decision.after)
    resolve = False
    if decision.moved:
        follow, resolve = _follow_move(customer, decision.after, signal, now, rules)
        values.update(follow)
        after = replace(after, tier=follow.get("tier", after.tier),
                        last_signal_at=follow.get("last_signal_at", after.last_signal_at))
    elif signal.source in PROVIDER_SOURCES:
        # Heard from the provider, even where it moved nothing (a repeat, a late or a stale event): the record
        # says when, and the dashboard's "last heard" with it.
        values["last_signal_at"] = now
        after = replace(after, last_signal_at=now)
    alerts: list[NewAlert] = []
    if decision.outcome is Outcome.CONFLICT:
        alerts.append(conflict_alert(after, signal, cause or f"{signal.source.value}:{now.isoformat()}"))
    if unknown_status is not None:
        notes.append(f"undocumented status {unknown_status!r}: kept raw, treated as in progress")
        flag = f"unknown_status:{unknown_status}"
        if flag not in after.flags:
            after = replace(after, flags=(*after.flags, flag))
            alerts.append(unknown_alert(after, unknown_status))
    new_flags = tuple(f for f in flags if f not in after.flags)
    if new_flags:
        after = replace(after, flags=(*after.flags, *new_flags))
    if extra:
        values.update(extra)
    if after.flags != customer.flags:
        values["flags"] = json.dumps(list(after.flags))
        if after.snapshot.version == customer.snapshot.version:  # a change readers see: the ETag follows it
            values.update(version=customer.snapshot.version + 1, updated_at=now)
            after = replace(after, snapshot=replace(after.snapshot, version=customer.snapshot.version + 1))
    history = change = None
    if decision.moved:
        assert signal.trigger is not None
        history = {"customer_id": customer.id, "from_state": decision.before.state.value,
                   "to_state": decision.after.state.value, "trigger": signal.trigger.value,
                   "source": signal.source.value, "event_id": event_id, "provider_status": signal.provider_status,
                   "provider_time": sent.provider_time, "recorded_at": now, "actor": actor,
                   "comment": signal.comment, "version": decision.after.version}
        change = {"customer_id": customer.id, "provider": customer.provider, "from": decision.before.state.value,
                  "to": decision.after.state.value, "trigger": signal.trigger.value, "source": signal.source.value,
                  "version": decision.after.version, "event_id": event_id}
    return Plan(customer, after, decision, signal, values, history, tuple(alerts), resolve, change, tuple(notes))


def _follow_move(customer: Customer, after: Snapshot, signal: Signal, now: datetime, rules: Rules
                 ) -> tuple[dict[str, Any], bool]:
    """What follows a move besides the snapshot: the provider's last word (for reconciliation), the escalation
    deadline and tier of a new attempt, the next poll; and whether open tier alerts are to be resolved."""
    before = customer.snapshot
    values: dict[str, Any] = {}
    signal_at = customer.last_signal_at
    if signal.source in PROVIDER_SOURCES:
        values["last_signal_at"] = signal_at = now
    resolve = False
    # An attempt ends when the customer leaves ``pending`` or starts another (each entry into ``pending``
    # counts one); a new attempt starts at tier ``none`` with its own deadline.
    if rules.escalation is not None and not (before.state is State.PENDING and after.state is State.PENDING
                                             and after.attempts == before.attempts):
        resolve = before.state is State.PENDING and customer.tier != Tier.NONE.value
        if after.state is State.PENDING:
            values.update(tier=Tier.NONE.value, **deadline(rules.escalation, customer.provider,
                                                           customer.customer_type, after.pending_since, Tier.NONE))
        elif before.state is State.PENDING:
            values.update(tier=Tier.NONE.value, deadline_at=None, deadline_tier=None)
    if rules.polling is not None:
        subject = PollSubject(customer.provider, customer.customer_type, after.state, after.pending_since,
                              signal_at, customer.last_polled_at)
        asked = pollable(customer.provider, customer.application_id)
        values["next_poll_at"] = next_poll(subject, rules.polling, now) if asked else None
    return values, resolve


def pollable(provider: str, application_id: str | None) -> bool:
    """Whether the provider can be asked about a customer: connectFi only by its application id."""
    return provider != "connectfi" or bool(application_id)


def deadline(policy: EscalationPolicy, provider: str, customer_type: str, pending_since: datetime | None,
             tier: Tier) -> dict[str, Any]:
    """The next tier above ``tier`` and when it is due, as the customer's columns."""
    if customer_type == "unknown":  # discovered by webhook: escalated as an individual until registered
        customer_type = "individual"
    upcoming = next_deadline(policy.thresholds(provider, customer_type), pending_since, tier)
    return {"deadline_at": upcoming[1] if upcoming else None,
            "deadline_tier": upcoming[0].value if upcoming else None}


def first_poll(values: Mapping[str, Any], now: datetime, policy: PollPolicy | None) -> datetime | None:
    """When to poll a customer first (registration, discovery). connectFi needs the application id to ask."""
    if policy is None or not pollable(values["provider"], values.get("application_id")):
        return None
    subject = PollSubject(values["provider"], values["customer_type"], State(values["state"]),
                          values.get("pending_since"), values.get("last_signal_at"), values.get("last_polled_at"))
    return next_poll(subject, policy, now)


def snapshot_values(snapshot: Snapshot) -> dict[str, Any]:
    values = {name: getattr(snapshot, name) for name in SNAPSHOT_FIELDS}
    values["state"] = snapshot.state.value
    return values


def conflict_alert(customer: Customer, signal: Signal, cause: str) -> NewAlert:
    """The provider contradicts a verified customer (``cause`` tells this contradiction from others)."""
    raw = signal.provider_status or (signal.trigger.value if signal.trigger else "?")
    return NewAlert(key=f"conflict:customer:{customer.id}:{raw}:{cause}", kind="conflict",
                    provider=customer.provider,
                    title=f"{customer.provider} says {raw} for verified customer {customer.provider_customer_id}",
                    customer=customer.named(), detail={"provider_status": raw})


def unknown_alert(customer: Customer, raw: str) -> NewAlert:
    """An undocumented status value (alerted once per customer and value)."""
    title = f"{customer.provider} sent an undocumented status {raw!r} for {customer.provider_customer_id}"
    return NewAlert(key=f"unknown_status:customer:{customer.id}:{raw}", kind="unknown_status",
                    provider=customer.provider, title=title, customer=customer.named(),
                    detail={"provider_status": raw})
