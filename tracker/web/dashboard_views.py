"""What the dashboard shows, in words: ages, a customer's standing, its tier and the provider's guidance for it,
the histogram of pending ages. Pure: rows and the time in, text and numbers out."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tracker.alerts import PROVIDER_NAMES, advice
from tracker.domain.lifecycle import State

TIERS = ("none", "overdue", "critical")
# The words beside each tier's colour.
TIER_WORDS = {"none": "on time", "overdue": "overdue", "critical": "critical"}
STATE_WORDS = {"awaiting_documents": "awaiting documents", "needs_action": "needs action"}
CUSTOMER_TYPES = ("individual", "business", "unknown")
# The histogram's buckets of pending age: (label, upper bound in hours; None: no bound).
BUCKETS: tuple[tuple[str, float | None], ...] = (
    ("0-30 min", 0.5), ("30-60 min", 1), ("1-2 h", 2), ("2-3 h", 3), ("3-5 h", 5), ("5-8 h", 8),
    ("8-24 h", 24), ("over 24 h", None),
)


def provider_name(provider: str) -> str:
    return PROVIDER_NAMES.get(provider, provider)


def span(seconds: float) -> str:
    """A duration as people say it: ``5 h 12 min``, ``45 min``, ``2 d 3 h``, ``under 1 min``."""
    minutes = int(max(0, seconds) // 60)
    days, hours, mins = minutes // 1440, minutes // 60 % 24, minutes % 60
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if minutes >= 60:
        return f"{minutes // 60} h {mins} min" if mins else f"{minutes // 60} h"
    return f"{mins} min" if mins else "under 1 min"


def stamp(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else "never"


def clock_time(value: datetime, now: datetime) -> str:
    """``14:12 UTC`` on the day of ``now``, else with the date."""
    return value.strftime("%H:%M UTC" if value.date() == now.date() else "%Y-%m-%d %H:%M UTC")


def relative(value: datetime | None, now: datetime) -> str:
    """``12 min ago`` or ``in 3 h 5 min``; empty for no time."""
    if value is None:
        return ""
    seconds = (now - value).total_seconds()
    return f"{span(seconds)} ago" if seconds >= 0 else f"in {span(-seconds)}"


def state_words(state: str) -> str:
    return STATE_WORDS.get(state, state)


def standing(row: Mapping[str, Any], now: datetime) -> str:
    """Where the customer stands, in words: ``pending 5 h 12 min at Blaaiz``, ``verified at connectFi``."""
    name = provider_name(row["provider"])
    if row["state"] == State.PENDING.value and row["pending_since"] is not None:
        return f"pending {span((now - row['pending_since']).total_seconds())} at {name}"
    return f"{state_words(row['state'])} at {name}"


def tier_of(row: Mapping[str, Any]) -> str:
    """The customer's tier as the dashboard colours it: only a pending customer has one."""
    tier = str(row["tier"] or "none")
    return tier if row["state"] == State.PENDING.value and tier in TIERS else "none"


def guidance(row: Mapping[str, Any]) -> str:
    """What the provider's guidance asks of operations at the customer's tier (tracker.alerts.advice from
    ``overdue`` on; before it, why to wait)."""
    if row["state"] != State.PENDING.value:
        return ""
    tier = tier_of(row)
    if tier != "none":
        return advice(tier, row["provider"], row)
    name = provider_name(row["provider"])
    if row["provider"] == "blaaiz" and row["customer_type"] == "business":
        return "Wait: Blaaiz reviews businesses in 1 to 5 business days."
    if row["provider"] == "blaaiz":
        return "Wait: Blaaiz does not act on enquiries before 2 h."
    return f"Wait: {name} publishes no review time; enquire with its support once overdue."


@dataclass
class Bar:
    label: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Histogram:
    """Pending customers by age bucket, each bar stacked by tier; geometry for an inline SVG."""

    bars: list[Bar]
    width: int = 640
    height: int = 220
    top: int = 16
    bottom: int = 40
    left: int = 36

    @property
    def total(self) -> int:
        return sum(bar.total for bar in self.bars)

    @property
    def scale(self) -> int:
        return max([bar.total for bar in self.bars] + [1])

    def rects(self) -> list[dict[str, Any]]:
        """One rectangle per (bar, tier) with customers in it: x, y, width, height, tier, count, label."""
        plot = self.height - self.top - self.bottom
        slot = (self.width - self.left) / len(self.bars)
        found = []
        for index, bar in enumerate(self.bars):
            base = float(self.height - self.bottom)
            for tier in TIERS:
                count = bar.counts[tier]
                if not count:
                    continue
                tall = plot * count / self.scale
                base -= tall
                found.append({"x": round(self.left + index * slot + slot * 0.15, 1), "y": round(base, 1),
                              "width": round(slot * 0.7, 1), "height": round(tall, 1), "tier": tier,
                              "count": count, "label": bar.label})
        return found

    def labels(self) -> list[dict[str, Any]]:
        """Each bar's label and total, centred under and above it."""
        slot = (self.width - self.left) / len(self.bars)
        plot = self.height - self.top - self.bottom
        return [{"x": round(self.left + (index + 0.5) * slot, 1), "label": bar.label, "total": bar.total,
                 "total_y": round(self.height - self.bottom - plot * bar.total / self.scale - 4, 1)}
                for index, bar in enumerate(self.bars)]


def histogram(rows: Iterable[Mapping[str, Any]], now: datetime) -> Histogram:
    bars = [Bar(label) for label, _ in BUCKETS]
    for row in rows:
        if row["pending_since"] is None:
            continue
        hours = (now - row["pending_since"]).total_seconds() / 3600
        index = next(i for i, (_, bound) in enumerate(BUCKETS) if bound is None or hours < bound)
        bars[index].counts[tier_of(row)] += 1
    return Histogram(bars)


def oldest_by_provider(pending: Sequence[Mapping[str, Any]], providers: Sequence[str]
                       ) -> dict[str, Mapping[str, Any] | None]:
    """Each provider's longest pending customer, from rows ordered oldest first."""
    oldest: dict[str, Mapping[str, Any] | None] = dict.fromkeys(providers)
    for row in pending:
        if oldest.get(row["provider"]) is None:
            oldest[row["provider"]] = row
    return oldest


def counts_table(counts: Iterable[tuple[str, str, str, int]], providers: Sequence[str]
                 ) -> dict[str, dict[str, int]]:
    """Per provider: customers by state, and pending ones by tier (``tier:none`` ...), and ``total``."""
    table: dict[str, dict[str, int]] = {p: {"total": 0} for p in providers}
    for provider, state, tier, n in counts:
        entry = table.setdefault(provider, {"total": 0})
        entry[state] = entry.get(state, 0) + n
        entry["total"] += n
        if state == State.PENDING.value:
            key = f"tier:{tier if tier in TIERS else 'none'}"
            entry[key] = entry.get(key, 0) + n
    return table
