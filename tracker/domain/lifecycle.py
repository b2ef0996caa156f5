"""The lifecycle of one tracked customer (DESIGN.md section 2), as data.

``TRANSITIONS`` is the whole table; ``decide`` applies one signal to one customer snapshot and says what
happens, without touching storage or reading a clock. Every (state, trigger) pair has a defined answer:
a transition, a no-op (already there), a refusal (with the reason), or, from ``verified``, a conflict.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

PROVIDERS = ("blaaiz", "connectfi", "cryptopocket")


class State(StrEnum):
    AWAITING_DOCUMENTS = "awaiting_documents"
    PENDING = "pending"
    NEEDS_ACTION = "needs_action"
    VERIFIED = "verified"
    REJECTED = "rejected"


class Trigger(StrEnum):
    SUBMITTED = "submitted"
    PROVIDER_APPROVED = "provider_approved"
    PROVIDER_REJECTED = "provider_rejected"
    PROVIDER_REQUESTED_MORE = "provider_requested_more"
    PROVIDER_REVIEWING = "provider_reviewing"
    OPERATOR_SET = "operator_set"  # a person sets the state by hand (``Signal.target``), from any state


class Source(StrEnum):
    WEBHOOK = "webhook"
    POLL = "poll"
    API = "api"
    OPERATOR = "operator"


class Outcome(StrEnum):
    APPLIED = "applied"  # the state moved
    NOOP = "noop"  # the customer is already where the signal points
    NO_TRIGGER = "no_trigger"  # the signal carries no lifecycle meaning (e.g. Blaaiz PENDING)
    REFUSED = "refused"  # the table does not allow it from this state
    CONFLICT = "conflict"  # a provider contradicts a verified customer
    STALE = "stale"  # older than the last event applied


S, T = State, Trigger

TRANSITIONS: dict[tuple[State, Trigger], State] = {
    (S.AWAITING_DOCUMENTS, T.SUBMITTED): S.PENDING,
    (S.NEEDS_ACTION, T.SUBMITTED): S.PENDING,
    (S.REJECTED, T.SUBMITTED): S.PENDING,
    (S.PENDING, T.PROVIDER_APPROVED): S.VERIFIED,
    (S.AWAITING_DOCUMENTS, T.PROVIDER_APPROVED): S.VERIFIED,
    (S.NEEDS_ACTION, T.PROVIDER_APPROVED): S.VERIFIED,
    (S.REJECTED, T.PROVIDER_APPROVED): S.VERIFIED,
    (S.PENDING, T.PROVIDER_REJECTED): S.REJECTED,
    (S.AWAITING_DOCUMENTS, T.PROVIDER_REJECTED): S.REJECTED,
    (S.NEEDS_ACTION, T.PROVIDER_REJECTED): S.REJECTED,
    (S.PENDING, T.PROVIDER_REQUESTED_MORE): S.NEEDS_ACTION,
    (S.AWAITING_DOCUMENTS, T.PROVIDER_REQUESTED_MORE): S.NEEDS_ACTION,
    (S.AWAITING_DOCUMENTS, T.PROVIDER_REVIEWING): S.PENDING,
    (S.NEEDS_ACTION, T.PROVIDER_REVIEWING): S.PENDING,
    (S.REJECTED, T.PROVIDER_REVIEWING): S.PENDING,
}

# Where each trigger points. A trigger that finds the customer already there is a no-op, not a refusal.
TARGET: dict[Trigger, State] = {
    T.SUBMITTED: S.PENDING,
    T.PROVIDER_APPROVED: S.VERIFIED,
    T.PROVIDER_REJECTED: S.REJECTED,
    T.PROVIDER_REQUESTED_MORE: S.NEEDS_ACTION,
    T.PROVIDER_REVIEWING: S.PENDING,
}

FINAL = frozenset({S.VERIFIED})


@dataclass(frozen=True)
class Snapshot:
    """What the lifecycle needs to know of a customer."""

    state: State = S.AWAITING_DOCUMENTS
    version: int = 0
    pending_since: datetime | None = None
    decided_at: datetime | None = None
    last_provider_time: datetime | None = None
    attempts: int = 0
    rejections: int = 0
    rejection_reason: str | None = None
    provider_status: str | None = None


@dataclass(frozen=True)
class Signal:
    """What one event, poll result or API call says about a customer, provider-neutral."""

    trigger: Trigger | None
    source: Source
    provider_status: str | None = None
    provider_time: datetime | None = None
    comment: str | None = None
    target: State | None = None  # where ``OPERATOR_SET`` points


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    before: Snapshot
    after: Snapshot
    reason: str

    @property
    def moved(self) -> bool:
        return self.outcome is Outcome.APPLIED

    @property
    def changed(self) -> bool:
        """Whether anything stored about the customer changes (a move, or only the provider's raw status)."""
        return self.after != self.before


def _is_stale(snapshot: Snapshot, signal: Signal) -> bool:
    return (
        signal.provider_time is not None
        and snapshot.last_provider_time is not None
        and signal.provider_time < snapshot.last_provider_time
    )


def decide(snapshot: Snapshot, signal: Signal, now: datetime) -> Decision:
    """Apply ``signal`` to ``snapshot`` at tracker time ``now``. Pure.

    The new snapshot is built in one constructor call (not a ``dataclasses.replace`` per change, which took
    most of the 17 us a move cost): the group-commit writer decides every webhook of a batch in turn."""
    if _is_stale(snapshot, signal):
        return Decision(
            Outcome.STALE,
            snapshot,
            snapshot,
            f"provider time {signal.provider_time:%Y-%m-%dT%H:%M:%S%z} is older than the last event applied "
            f"({snapshot.last_provider_time:%Y-%m-%dT%H:%M:%S%z})",
        )
    # What every non-stale signal updates: the provider's latest raw word and its clock.
    status = signal.provider_status if signal.provider_status is not None else snapshot.provider_status
    seen_at = signal.provider_time or snapshot.last_provider_time
    trigger = signal.trigger
    if trigger is None:
        return _observed(Outcome.NO_TRIGGER, snapshot, status, seen_at, "the signal does not move the lifecycle")
    if trigger is T.OPERATOR_SET:
        # A person's word: any state to any other, a final one included (that is what the override is for).
        if signal.target is None:
            raise ValueError("an operator_set signal needs a target state")
        if snapshot.state == signal.target:
            return _observed(Outcome.NOOP, snapshot, status, seen_at, f"already {signal.target.value}")
        return _moved(snapshot, signal, signal.target, status, seen_at, now)
    target = TARGET[trigger]
    if snapshot.state in FINAL and target != snapshot.state:
        # The provider contradicts a final decision: keep the state (and its raw status), flag it.
        return Decision(
            Outcome.CONFLICT,
            snapshot,
            snapshot,
            f"{trigger.value} contradicts {snapshot.state.value}, which is final; a person should look at it",
        )
    if snapshot.state == target:
        return _observed(Outcome.NOOP, snapshot, status, seen_at, f"already {target.value}")
    new_state = TRANSITIONS.get((snapshot.state, trigger))
    if new_state is None:
        return _observed(Outcome.REFUSED, snapshot, status, seen_at,
                         f"{trigger.value} is not allowed from {snapshot.state.value}")
    return _moved(snapshot, signal, new_state, status, seen_at, now)


def _moved(snapshot: Snapshot, signal: Signal, new_state: State, status: str | None, seen_at: datetime | None,
           now: datetime) -> Decision:
    """A move to ``new_state`` and what entering it resets. A rejection by an operator is not the provider's:
    it does not count towards the provider's rejections (Blaaiz's blacklisting warning)."""
    assert signal.trigger is not None
    pending_since: datetime | None = None
    decided_at, attempts, rejections = snapshot.decided_at, snapshot.attempts, snapshot.rejections
    rejection_reason = snapshot.rejection_reason
    if new_state is S.PENDING:
        pending_since, decided_at, attempts, rejection_reason = now, None, attempts + 1, None
    elif new_state is S.VERIFIED:
        decided_at, rejection_reason = now, None
    elif new_state is S.REJECTED:
        decided_at, rejection_reason = now, signal.comment
        rejections += 0 if signal.trigger is T.OPERATOR_SET else 1
    elif new_state is S.AWAITING_DOCUMENTS:
        decided_at, rejection_reason = None, None
    after = Snapshot(state=new_state, version=snapshot.version + 1, pending_since=pending_since,
                     decided_at=decided_at, last_provider_time=seen_at, attempts=attempts, rejections=rejections,
                     rejection_reason=rejection_reason, provider_status=status)
    return Decision(Outcome.APPLIED, snapshot, after,
                    f"{signal.trigger.value}: {snapshot.state.value} -> {new_state.value}")


def _observed(outcome: Outcome, snapshot: Snapshot, status: str | None, seen_at: datetime | None,
              reason: str) -> Decision:
    """No move, but the provider's raw status or clock may be new. A new raw status is a change the API shows:
    it gets a new version, so ETags follow it. The provider's clock alone is bookkeeping for the stale check:
    stored, but nothing a reader sees changes (a re-sent status changes no version, no ETag)."""
    if status == snapshot.provider_status and seen_at == snapshot.last_provider_time:
        return Decision(outcome, snapshot, snapshot, reason)
    version = snapshot.version + 1 if status != snapshot.provider_status else snapshot.version
    after = Snapshot(state=snapshot.state, version=version, pending_since=snapshot.pending_since,
                     decided_at=snapshot.decided_at, last_provider_time=seen_at, attempts=snapshot.attempts,
                     rejections=snapshot.rejections, rejection_reason=snapshot.rejection_reason,
                     provider_status=status)
    return Decision(outcome, snapshot, after, reason)


def replay(history: list[tuple[State, State]], initial: State = S.AWAITING_DOCUMENTS) -> State:
    """Fold a history of (from, to) rows; raises ValueError when a row does not start where the last ended."""
    state = initial
    for before, after in history:
        if before != state:
            raise ValueError(f"history is broken: a row starts at {before.value} but the customer was {state.value}")
        state = after
    return state
