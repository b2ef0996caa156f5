"""The lifecycle of DESIGN.md section 2: table-driven over every (state, trigger) pair, plus a stateful model test.

The expected answers below are written out from DESIGN.md, not derived from ``tracker.domain.lifecycle``, so a
wrong row in ``TRANSITIONS`` (or in ``decide``) shows up as a disagreement.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tracker.domain.lifecycle import (
    TRANSITIONS,
    Decision,
    Outcome,
    Signal,
    Snapshot,
    Source,
    State,
    Trigger,
    decide,
    replay,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(days=2)

AWAITING = State.AWAITING_DOCUMENTS
PENDING = State.PENDING
NEEDS = State.NEEDS_ACTION
VERIFIED = State.VERIFIED
REJECTED = State.REJECTED

SUBMITTED = Trigger.SUBMITTED
APPROVED = Trigger.PROVIDER_APPROVED
PROV_REJECTED = Trigger.PROVIDER_REJECTED
MORE = Trigger.PROVIDER_REQUESTED_MORE
REVIEWING = Trigger.PROVIDER_REVIEWING

APPLIED, NOOP, REFUSED, CONFLICT = Outcome.APPLIED, Outcome.NOOP, Outcome.REFUSED, Outcome.CONFLICT

# Every one of the 25 (state, trigger) pairs, with the outcome and the state the customer ends in.
EXPECTED: dict[tuple[State, Trigger], tuple[Outcome, State]] = {
    # awaiting_documents: every trigger moves it
    (AWAITING, SUBMITTED): (APPLIED, PENDING),
    (AWAITING, APPROVED): (APPLIED, VERIFIED),
    (AWAITING, PROV_REJECTED): (APPLIED, REJECTED),
    (AWAITING, MORE): (APPLIED, NEEDS),
    (AWAITING, REVIEWING): (APPLIED, PENDING),
    # pending: submitted / reviewing find it already pending
    (PENDING, SUBMITTED): (NOOP, PENDING),
    (PENDING, APPROVED): (APPLIED, VERIFIED),
    (PENDING, PROV_REJECTED): (APPLIED, REJECTED),
    (PENDING, MORE): (APPLIED, NEEDS),
    (PENDING, REVIEWING): (NOOP, PENDING),
    # needs_action
    (NEEDS, SUBMITTED): (APPLIED, PENDING),
    (NEEDS, APPROVED): (APPLIED, VERIFIED),
    (NEEDS, PROV_REJECTED): (APPLIED, REJECTED),
    (NEEDS, MORE): (NOOP, NEEDS),
    (NEEDS, REVIEWING): (APPLIED, PENDING),
    # verified is final: anything contrary is a conflict
    (VERIFIED, SUBMITTED): (CONFLICT, VERIFIED),
    (VERIFIED, APPROVED): (NOOP, VERIFIED),
    (VERIFIED, PROV_REJECTED): (CONFLICT, VERIFIED),
    (VERIFIED, MORE): (CONFLICT, VERIFIED),
    (VERIFIED, REVIEWING): (CONFLICT, VERIFIED),
    # rejected: a resubmission (or the provider reviewing again) reopens it; asking for more is not in the table
    (REJECTED, SUBMITTED): (APPLIED, PENDING),
    (REJECTED, APPROVED): (APPLIED, VERIFIED),
    (REJECTED, PROV_REJECTED): (NOOP, REJECTED),
    (REJECTED, MORE): (REFUSED, REJECTED),
    (REJECTED, REVIEWING): (APPLIED, PENDING),
}

# The transition table exactly as DESIGN.md section 2 lists it: trigger -> (from states, to).
DESIGN_TABLE: dict[str, tuple[set[str], str]] = {
    "submitted": ({"awaiting_documents", "needs_action", "rejected"}, "pending"),
    "provider_approved": ({"pending", "awaiting_documents", "needs_action", "rejected"}, "verified"),
    "provider_rejected": ({"pending", "awaiting_documents", "needs_action"}, "rejected"),
    "provider_requested_more": ({"pending", "awaiting_documents"}, "needs_action"),
    "provider_reviewing": ({"awaiting_documents", "needs_action", "rejected"}, "pending"),
}


def snapshot_in(state: State, **changes: object) -> Snapshot:
    """A plausible snapshot of a customer in ``state`` (the fields a real one in that state would have)."""
    base = Snapshot(
        state=state,
        version=7,
        pending_since=EARLIER if state is PENDING else None,
        decided_at=EARLIER if state in (VERIFIED, REJECTED) else None,
        last_provider_time=EARLIER,
        attempts=2,
        rejections=1,
        rejection_reason="blurry passport" if state is REJECTED else None,
        provider_status="SOMETHING",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


# --- the table ----------------------------------------------------------------------------------------------------


PROVIDER_AND_API_TRIGGERS = [t for t in Trigger if t is not Trigger.OPERATOR_SET]


def test_expected_covers_every_pair() -> None:
    assert set(EXPECTED) == {(s, t) for s in State for t in PROVIDER_AND_API_TRIGGERS}
    assert len(EXPECTED) == 25


@pytest.mark.parametrize("target", list(State))
@pytest.mark.parametrize("state", list(State))
def test_an_operator_sets_any_state_from_any_state(state: State, target: State) -> None:
    """The override is a person's word: from any state (verified included) to any other; entering a state
    resets what entering it always resets; an operator's rejection is not the provider's (not counted)."""
    before = snapshot_in(state)
    signal = Signal(Trigger.OPERATOR_SET, Source.OPERATOR, comment="checked by hand", target=target)
    decision = decide(before, signal, NOW)
    if state is target:
        assert decision.outcome is NOOP
        assert decision.after == before
        return
    assert decision.outcome is APPLIED
    after = decision.after
    assert (after.state, after.version) == (target, before.version + 1)
    assert after.rejections == before.rejections
    assert after.pending_since == (NOW if target is PENDING else None)
    assert after.attempts == before.attempts + (1 if target is PENDING else 0)
    assert after.decided_at == {VERIFIED: NOW, REJECTED: NOW, AWAITING: None, PENDING: None}.get(
        target, before.decided_at)
    assert after.rejection_reason == ("checked by hand" if target is REJECTED else
                                      before.rejection_reason if target is NEEDS else None)


def test_an_operator_signal_without_a_target_is_a_bug_not_a_move() -> None:
    with pytest.raises(ValueError, match="needs a target"):
        decide(snapshot_in(PENDING), Signal(Trigger.OPERATOR_SET, Source.OPERATOR), NOW)


def test_transitions_has_exactly_the_design_rows() -> None:
    design_rows = {
        (State(frm), Trigger(trigger)): State(to)
        for trigger, (froms, to) in DESIGN_TABLE.items()
        for frm in froms
    }
    assert len(design_rows) == 15
    assert dict(TRANSITIONS) == design_rows


def test_expected_agrees_with_the_design_table() -> None:
    """The two hand-written views of section 2 in this file say the same thing (guards the test itself)."""
    for (state, trigger), (outcome, to) in EXPECTED.items():
        froms, target = DESIGN_TABLE[trigger.value]
        if outcome is APPLIED:
            assert state.value in froms
            assert to.value == target
        else:
            assert state.value not in froms
            assert to is state


@pytest.mark.parametrize(("state", "trigger"), list(EXPECTED), ids=lambda v: v.value)
def test_decide_every_pair(state: State, trigger: Trigger) -> None:
    outcome, to = EXPECTED[(state, trigger)]
    before = snapshot_in(state)
    decision = decide(before, Signal(trigger, Source.WEBHOOK), NOW)
    assert decision.outcome is outcome, decision.reason
    assert decision.before == before
    assert decision.after.state is to
    assert decision.reason  # never silent: every answer says why
    if outcome is APPLIED:
        assert decision.moved
        assert decision.changed
        assert decision.after.version == before.version + 1
    else:
        # The signal carries no raw status or time: nothing stored changes, so no new version.
        assert not decision.moved
        assert not decision.changed
        assert decision.after == before


@pytest.mark.parametrize(("state", "trigger"), [k for k, v in EXPECTED.items() if v[0] is REFUSED],
                         ids=lambda v: v.value)
def test_refusal_says_why(state: State, trigger: Trigger) -> None:
    decision = decide(snapshot_in(state), Signal(trigger, Source.WEBHOOK), NOW)
    assert decision.outcome is REFUSED
    assert trigger.value in decision.reason
    assert state.value in decision.reason


# --- what a move does to the other fields -------------------------------------------------------------------------


@pytest.mark.parametrize("state", [AWAITING, NEEDS, REJECTED], ids=lambda v: v.value)
@pytest.mark.parametrize("trigger", [SUBMITTED, REVIEWING], ids=lambda v: v.value)
def test_entering_pending_starts_the_clock_and_counts_an_attempt(state: State, trigger: Trigger) -> None:
    before = snapshot_in(state)
    after = decide(before, Signal(trigger, Source.API), NOW).after
    assert after.state is PENDING
    assert after.pending_since == NOW
    assert after.attempts == before.attempts + 1
    assert after.decided_at is None


def test_resubmission_after_rejection_resets_the_clock_and_keeps_counting() -> None:
    snap = Snapshot()
    snap = decide(snap, Signal(SUBMITTED, Source.API), NOW).after
    assert (snap.state, snap.attempts, snap.pending_since) == (PENDING, 1, NOW)
    t1 = NOW + timedelta(hours=5)
    snap = decide(snap, Signal(PROV_REJECTED, Source.WEBHOOK, comment="blurry"), t1).after
    assert (snap.state, snap.pending_since, snap.decided_at, snap.rejections) == (REJECTED, None, t1, 1)
    t2 = NOW + timedelta(days=1)
    snap = decide(snap, Signal(SUBMITTED, Source.API), t2).after
    assert snap.state is PENDING
    assert snap.pending_since == t2  # a new clock, not the first one
    assert snap.attempts == 2
    assert snap.rejections == 1  # the history of rejections is kept
    assert snap.decided_at is None
    assert snap.rejection_reason is None


@pytest.mark.parametrize("trigger", [APPROVED, PROV_REJECTED, MORE], ids=lambda v: v.value)
def test_leaving_pending_clears_pending_since(trigger: Trigger) -> None:
    after = decide(snapshot_in(PENDING), Signal(trigger, Source.WEBHOOK), NOW).after
    assert after.state is not PENDING
    assert after.pending_since is None


@pytest.mark.parametrize("state", [AWAITING, PENDING, NEEDS, REJECTED], ids=lambda v: v.value)
def test_verified_sets_decided_at(state: State) -> None:
    after = decide(snapshot_in(state), Signal(APPROVED, Source.WEBHOOK), NOW).after
    assert after.state is VERIFIED
    assert after.decided_at == NOW
    assert after.pending_since is None
    assert after.rejection_reason is None


@pytest.mark.parametrize("state", [AWAITING, PENDING, NEEDS], ids=lambda v: v.value)
def test_rejection_keeps_the_comment_and_counts(state: State) -> None:
    before = snapshot_in(state)
    after = decide(before, Signal(PROV_REJECTED, Source.WEBHOOK, comment="document expired"), NOW).after
    assert after.state is REJECTED
    assert after.decided_at == NOW
    assert after.rejection_reason == "document expired"
    assert after.rejections == before.rejections + 1
    assert after.attempts == before.attempts
    assert after.pending_since is None


def test_needs_action_does_not_count_a_rejection_or_decide() -> None:
    before = snapshot_in(PENDING, decided_at=None)
    after = decide(before, Signal(MORE, Source.WEBHOOK, comment="upload a utility bill"), NOW).after
    assert after.state is NEEDS
    assert after.rejections == before.rejections
    assert after.decided_at is None
    assert after.rejection_reason is None


def test_apply_records_the_provider_status_and_time() -> None:
    later = EARLIER + timedelta(hours=1)
    after = decide(snapshot_in(PENDING), Signal(APPROVED, Source.WEBHOOK, "APPROVED", later), NOW).after
    assert (after.provider_status, after.last_provider_time) == ("APPROVED", later)


# --- stale events -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("state", "trigger"), list(EXPECTED), ids=lambda v: v.value)
def test_older_provider_time_is_stale_and_changes_nothing(state: State, trigger: Trigger) -> None:
    before = snapshot_in(state)
    older = EARLIER - timedelta(seconds=1)
    decision = decide(before, Signal(trigger, Source.WEBHOOK, "NEWSTATUS", older, comment="x"), NOW)
    assert decision.outcome is Outcome.STALE
    assert decision.after == before
    assert not decision.changed
    assert decision.reason


def test_stale_signal_without_trigger_is_stale() -> None:
    before = snapshot_in(PENDING)
    decision = decide(before, Signal(None, Source.POLL, "NEWSTATUS", EARLIER - timedelta(minutes=1)), NOW)
    assert decision.outcome is Outcome.STALE
    assert decision.after == before


def test_equal_provider_time_is_not_stale() -> None:
    decision = decide(snapshot_in(PENDING), Signal(APPROVED, Source.WEBHOOK, "APPROVED", EARLIER), NOW)
    assert decision.outcome is APPLIED
    assert decision.after.state is VERIFIED


@pytest.mark.parametrize("last", [EARLIER, None], ids=["known", "unknown"])
def test_missing_provider_time_is_never_stale(last: datetime | None) -> None:
    before = snapshot_in(PENDING, last_provider_time=last)
    decision = decide(before, Signal(APPROVED, Source.POLL, "APPROVED", None), NOW)
    assert decision.outcome is APPLIED
    assert decision.after.last_provider_time == last  # a signal without a time does not erase the last one


def test_first_provider_time_is_never_stale() -> None:
    before = snapshot_in(PENDING, last_provider_time=None)
    decision = decide(before, Signal(MORE, Source.WEBHOOK, None, datetime(2000, 1, 1, tzinfo=UTC)), NOW)
    assert decision.outcome is APPLIED
    assert decision.after.last_provider_time == datetime(2000, 1, 1, tzinfo=UTC)


# --- signals that do not move the state ---------------------------------------------------------------------------


@pytest.mark.parametrize("state", list(State), ids=lambda v: v.value)
def test_no_trigger_with_new_status_bumps_version_but_not_state(state: State) -> None:
    before = snapshot_in(state)
    decision = decide(before, Signal(None, Source.POLL, "PENDING"), NOW)
    assert decision.outcome is Outcome.NO_TRIGGER
    assert decision.after.state is state
    assert decision.after.provider_status == "PENDING"
    assert decision.after.version == before.version + 1
    assert decision.changed
    assert not decision.moved
    assert replace(decision.after, provider_status=before.provider_status, version=before.version) == before


def test_no_trigger_with_same_status_changes_nothing() -> None:
    before = snapshot_in(PENDING)
    decision = decide(before, Signal(None, Source.POLL, before.provider_status), NOW)
    assert decision.outcome is Outcome.NO_TRIGGER
    assert decision.after == before
    assert not decision.changed


def test_no_trigger_with_newer_time_records_the_time() -> None:
    before = snapshot_in(PENDING)
    later = EARLIER + timedelta(minutes=3)
    decision = decide(before, Signal(None, Source.WEBHOOK, None, later), NOW)
    assert decision.outcome is Outcome.NO_TRIGGER
    assert decision.after.last_provider_time == later
    assert decision.changed  # stored, for the stale check ...
    assert decision.after.version == before.version  # ... but nothing a reader sees: no new version, no new ETag


@pytest.mark.parametrize(("state", "trigger"), [k for k, v in EXPECTED.items() if v[0] in (NOOP, REFUSED)],
                         ids=lambda v: v.value)
def test_noop_and_refusal_record_a_new_raw_status(state: State, trigger: Trigger) -> None:
    before = snapshot_in(state)
    later = EARLIER + timedelta(seconds=30)
    decision = decide(before, Signal(trigger, Source.WEBHOOK, "RAW", later), NOW)
    assert decision.outcome is EXPECTED[(state, trigger)][0]
    assert decision.after.state is state
    assert (decision.after.provider_status, decision.after.last_provider_time) == ("RAW", later)
    assert decision.after.version == before.version + 1


@pytest.mark.parametrize("trigger", [SUBMITTED, PROV_REJECTED, MORE, REVIEWING], ids=lambda v: v.value)
def test_conflict_from_verified_keeps_everything(trigger: Trigger) -> None:
    before = snapshot_in(VERIFIED)
    later = EARLIER + timedelta(hours=1)
    decision = decide(before, Signal(trigger, Source.WEBHOOK, "REJECTED", later, comment="fraud"), NOW)
    assert decision.outcome is CONFLICT
    assert decision.after == before
    assert not decision.changed
    assert "verified" in decision.reason


# --- replay -------------------------------------------------------------------------------------------------------


def test_replay() -> None:
    assert replay([]) is AWAITING
    assert replay([(AWAITING, PENDING), (PENDING, REJECTED), (REJECTED, PENDING), (PENDING, VERIFIED)]) is VERIFIED
    assert replay([(PENDING, NEEDS)], initial=PENDING) is NEEDS
    with pytest.raises(ValueError, match="broken"):
        replay([(AWAITING, PENDING), (NEEDS, PENDING)])
    with pytest.raises(ValueError, match="broken"):
        replay([(PENDING, VERIFIED)])


# --- stateful: random event sequences against a simple model ------------------------------------------------------


class Model:
    """An independent, string-based model of section 2 (does not use TRANSITIONS, TARGET or decide)."""

    def __init__(self) -> None:
        self.state = "awaiting_documents"
        self.last_time: datetime | None = None
        self.entries: dict[str, int] = {}

    def outcome(self, trigger: str | None, provider_time: datetime | None) -> str:
        if provider_time is not None and self.last_time is not None and provider_time < self.last_time:
            return "stale"
        if trigger is None:
            return "no_trigger"
        froms, target = DESIGN_TABLE[trigger]
        if self.state == "verified" and target != "verified":
            return "conflict"
        if self.state == target:
            return "noop"
        return "applied" if self.state in froms else "refused"

    def apply(self, trigger: str | None, provider_time: datetime | None) -> str:
        outcome = self.outcome(trigger, provider_time)
        if outcome in ("stale", "conflict"):
            return outcome
        if provider_time is not None:
            self.last_time = provider_time
        if outcome == "applied":
            assert trigger is not None
            self.state = DESIGN_TABLE[trigger][1]
            self.entries[self.state] = self.entries.get(self.state, 0) + 1
        return outcome


TRIGGERS = st.one_of(st.none(), st.sampled_from(PROVIDER_AND_API_TRIGGERS))  # operators: tested above
STATUSES = st.sampled_from([None, "PENDING", "PROCESSING", "APPROVED", "REJECTED", "running", "processing"])
COMMENTS = st.sampled_from([None, "blurry", "suspected fraud"])
TIME_KIND = st.sampled_from(["now", "older", "none"])


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.snapshot = Snapshot()
        self.history: list[tuple[State, State]] = []
        self.now = NOW
        self.model = Model()
        self.last: tuple[Signal, Decision] | None = None
        self.ever_verified = False
        self.max_provider_time: datetime | None = None
        self.changes = 0

    def _send(self, signal: Signal) -> Decision:
        before = self.snapshot
        expected = self.model.apply(signal.trigger.value if signal.trigger else None, signal.provider_time)
        decision = decide(before, signal, self.now)
        assert decision.before == before
        assert decision.outcome.value == expected, (decision.reason, expected)
        # Version increases on every change a reader sees (anything but the provider's clock), never otherwise.
        seen = replace(decision.after, last_provider_time=before.last_provider_time, version=before.version)
        if seen != before:
            assert decision.after.version == before.version + 1
            self.changes += 1
        elif decision.changed:
            assert decision.after.version == before.version
            assert decision.after.last_provider_time != before.last_provider_time
        else:
            assert decision.after.version == before.version
            assert decision.after == before
        # Only APPLIED moves the state; everything else leaves it where it was.
        if decision.outcome is APPLIED:
            assert decision.after.state is not before.state
            self.history.append((before.state, decision.after.state))
            if decision.after.state is REJECTED:
                assert decision.after.rejection_reason == signal.comment
        else:
            assert decision.after.state is before.state
        if decision.outcome in (Outcome.STALE, CONFLICT):
            assert not decision.changed
        # Never leaves verified, and never ignores a contrary signal silently.
        if before.state is VERIFIED:
            assert decision.after.state is VERIFIED
            if signal.trigger not in (None, APPROVED) and decision.outcome is not Outcome.STALE:
                assert decision.outcome is CONFLICT
        self.snapshot = decision.after
        self.last = (signal, decision)
        self.ever_verified = self.ever_verified or self.snapshot.state is VERIFIED
        return decision

    @rule(trigger=TRIGGERS, status=STATUSES, comment=COMMENTS, kind=TIME_KIND,
          back=st.integers(min_value=1, max_value=7200), source=st.sampled_from(list(Source)))
    def send(self, trigger: Trigger | None, status: str | None, comment: str | None, kind: str, back: int,
             source: Source) -> None:
        provider_time = {"now": self.now, "older": self.now - timedelta(seconds=back), "none": None}[kind]
        self._send(Signal(trigger, source, status, provider_time, comment))

    @precondition(lambda self: self.last is not None)
    @rule()
    def resend_previous(self) -> None:
        assert self.last is not None
        signal, first = self.last
        decision = self._send(signal)
        # A duplicate is idempotent: it changes nothing, and answers like the first did, except that a signal
        # that moved the customer now finds it at the target.
        assert not decision.changed
        expected = NOOP if first.outcome is APPLIED else first.outcome
        assert decision.outcome is expected

    @rule(seconds=st.integers(min_value=0, max_value=86_400))
    def advance(self, seconds: int) -> None:
        self.now += timedelta(seconds=seconds)

    @invariant()
    def verified_is_forever(self) -> None:
        if self.ever_verified:
            assert self.snapshot.state is VERIFIED

    @invariant()
    def history_replays_to_the_current_state(self) -> None:
        assert replay(self.history) is self.snapshot.state

    @invariant()
    def model_agrees(self) -> None:
        assert self.snapshot.state == self.model.state
        assert self.snapshot.last_provider_time == self.model.last_time

    @invariant()
    def counters_follow_the_history(self) -> None:
        assert self.snapshot.attempts == sum(1 for _, to in self.history if to is PENDING)
        assert self.snapshot.attempts == self.model.entries.get("pending", 0)
        assert self.snapshot.rejections == sum(1 for _, to in self.history if to is REJECTED)

    @invariant()
    def version_counts_the_changes(self) -> None:
        # One version per change a reader sees, and every move is one.
        assert self.snapshot.version == self.changes
        assert self.changes >= len(self.history)

    @invariant()
    def clocks_match_the_state(self) -> None:
        snap = self.snapshot
        assert (snap.pending_since is not None) == (snap.state is PENDING)
        if snap.pending_since is not None:
            assert snap.pending_since <= self.now
        assert (snap.decided_at is not None) == (snap.state in (VERIFIED, REJECTED))
        if snap.rejection_reason is not None:
            assert snap.state is REJECTED

    @invariant()
    def provider_time_never_goes_back(self) -> None:
        current = self.snapshot.last_provider_time
        if self.max_provider_time is not None:
            assert current is not None
            assert current >= self.max_provider_time
        self.max_provider_time = current


LifecycleMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_lifecycle_stateful = LifecycleMachine.TestCase
