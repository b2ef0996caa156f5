"""Why a customer is where it is, in words and as data, from what the tracker stored: its history rows (every
move, with the rule that allowed it), its inbound events (also those that moved nothing, and why), its tier
and its polls. Pure: the caller reads the rows; this only reads them back in order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from tracker.domain.lifecycle import TRANSITIONS, State, Trigger


class Row(Protocol):
    """A stored row by column name (a SQLAlchemy ``RowMapping``, or a dict)."""

    def __getitem__(self, name: str, /) -> Any: ...

OUTCOME_WORDS = {
    "no_change": "changed nothing",
    "stale": "was stale: older than the last provider time applied, so it moved nothing",
    "conflict": "contradicted a verified customer: kept, moved nothing, alerted",
    "refused": "was refused by the lifecycle",
    "rejected": "was refused when it arrived",
    "error": "could not be applied (see tracker replay)",
    "ignored": "is not about a review",
}
SOURCE_WORDS = {"webhook": "a webhook", "poll": "a poll", "api": "the API", "operator": "an operator"}


def rule(from_state: str | None, trigger: str | None, to_state: str) -> str:
    """The lifecycle rule a move applied, as text (``pending + provider_approved -> verified``)."""
    if trigger == Trigger.OPERATOR_SET.value:
        return f"an operator may set any state: {from_state} -> {to_state}"
    if from_state is None:
        return f"registered as {to_state}"
    try:
        allowed = TRANSITIONS.get((State(from_state), Trigger(trigger or ""))) == State(to_state)
    except ValueError:
        allowed = False
    return f"{from_state} + {trigger} -> {to_state}" + ("" if allowed else " (not in the lifecycle table)")


def explain(customer: Row, transitions: Sequence[Row], events: Sequence[Row], now: datetime) -> dict[str, Any]:
    """The explanation of ``customer``: ``steps`` (moves and the events that did not move it, oldest first),
    ``tier`` and ``polling`` as data, and ``text``, the same in sentences."""
    applied = {t["event_id"] for t in transitions if t["event_id"] is not None}
    steps: list[dict[str, Any]] = []
    for t in transitions:
        steps.append({
            "at": t["recorded_at"], "kind": "move", "source": t["source"], "trigger": t["trigger"],
            "from": t["from_state"], "to": t["to_state"], "event": t["event_id"],
            "provider_status": t["provider_status"], "provider_time": t["provider_time"], "actor": t["actor"],
            "rule": rule(t["from_state"], t["trigger"], t["to_state"]), "reason": t["comment"],
        })
    for e in sorted(events, key=lambda event: int(event["id"])):  # in arrival order, whatever order they came
        if e["id"] in applied or e["outcome"] in (None, "applied") or e["duplicate_of"] is not None:
            continue
        steps.append({
            "at": e["processed_at"] or e["received_at"], "kind": "event", "source": "webhook",
            "event": e["id"], "event_type": e["event_type"], "provider_status": e["provider_status"],
            "provider_time": e["provider_time"], "outcome": e["outcome"], "reason": e["reason"],
        })
    steps.sort(key=lambda step: (step["at"], 0 if step["kind"] == "move" else 1))
    tier = {"current": customer["tier"], "next": customer["deadline_tier"], "next_at": customer["deadline_at"]}
    polling = {"last_polled_at": customer["last_polled_at"], "next_poll_at": customer["next_poll_at"],
               "last_poll_error": customer["last_poll_error"]}
    return {"customer_id": customer["id"], "state": customer["state"], "steps": steps, "tier": tier,
            "polling": polling, "text": _text(customer, steps, now)}


def _text(customer: Row, steps: Sequence[Mapping[str, Any]], now: datetime) -> list[str]:
    lines = [f"Customer {customer['id']} ({customer['provider']} {customer['provider_customer_id']}) is "
             f"{customer['state']}{_since(customer, now)}."]
    for step in steps:
        when = _stamp(step["at"])
        status = f" (provider status {step['provider_status']})" if step.get("provider_status") else ""
        if step["kind"] == "move":
            who = SOURCE_WORDS.get(step["source"], step["source"])
            by = f" by {step['actor']}" if step["source"] == "operator" and step.get("actor") else ""
            reason = f"; reason: {step['reason']}" if step.get("reason") else ""
            lines.append(f"{when}: {who}{by}{status} moved it {step['from'] or '(new)'} -> {step['to']}, "
                         f"by the rule {step['rule']}{reason}.")
        else:
            words = OUTCOME_WORDS.get(step["outcome"], step["outcome"])
            why = f": {step['reason']}" if step.get("reason") else ""
            lines.append(f"{when}: webhook event {step['event']}{status} {words}{why}.")
    if customer["state"] == State.PENDING.value:
        if customer["deadline_tier"] is not None and customer["deadline_at"] is not None:
            lines.append(f"Tier {customer['tier']}; {customer['deadline_tier']} is due at "
                         f"{_stamp(customer['deadline_at'])}.")
        else:
            lines.append(f"Tier {customer['tier']}; no further tier is due.")
    if customer["last_poll_error"]:
        lines.append(f"The last poll, at {_stamp(customer['last_polled_at'])}, failed: "
                     f"{customer['last_poll_error']}.")
    elif customer["last_polled_at"] is not None:
        lines.append(f"Last polled at {_stamp(customer['last_polled_at'])}.")
    lines.append(f"Next poll at {_stamp(customer['next_poll_at'])}." if customer["next_poll_at"] is not None
                 else "No poll is scheduled.")
    return lines


def _since(customer: Row, now: datetime) -> str:
    since = customer["pending_since"] if customer["state"] == State.PENDING.value else customer["decided_at"]
    if since is None:
        return ""
    minutes = max(0, int((now - since).total_seconds() // 60))
    return f" since {_stamp(since)} ({minutes // 60} h {minutes % 60:02d} min)"


def _stamp(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "never"
